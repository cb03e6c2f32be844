"""Training: losses, data, and the trainers built on `transformers.Trainer`.

Nothing is imported here, so `cai.train.losses` loads with torch alone.
"""
