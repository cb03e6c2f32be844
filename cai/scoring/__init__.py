"""What every job asks a feedback model, as multiple-choice questions read through its
`choice_logprobs`: which of two answers is better (`preference`), whether an answer does what
was asked or refuses (`classify`), and the soft-label math both use (`labels`). The revision
gate, `cai label`, `cai eval` and PPO's AI-feedback reward all score here; no files, no
progress bars."""
