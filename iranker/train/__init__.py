"""Training: PPO (ours) on elimination steps, with the rewards of `iranker.rewards`. See `iranker.train.loop`."""

from iranker.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
