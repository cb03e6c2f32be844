"""`cai train ppo`: the loop (`loop`), its `ppo:` section (`config`), the rollout passes
(`rollout`), the value head (`critic`), the reward sources (`rewards`) and their normalization
(`reward_stats`), checkpoints (`checkpoint`) and the run's log (`log`).

Nothing is imported here, so the schema generator reads `config` without torch.
"""
