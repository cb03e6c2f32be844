"""SL-CAI, `cai revise`: answers critiqued and revised against sampled principles (`job`), the
gate a revision must pass (`gate`), and `cai constitution try`, one round per principle on one
answer (`preview`). Options in `config`."""
