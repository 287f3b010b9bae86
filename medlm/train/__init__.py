"""SpeechLM training on Ray Train + DeepSpeed: one core, four jobs configured in YAML."""

from medlm.train.config import OptimSpec, RunSpec, TrainJobConfig
from medlm.train.core import train

__all__ = ["OptimSpec", "RunSpec", "TrainJobConfig", "train"]
