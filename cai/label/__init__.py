"""RL-CAI, `cai label`: AI preference labels on pairs of the policy's answers (`job`), and
`cai label --check`, a labeler's accuracy and calibration (`check`). Options in `config`."""
