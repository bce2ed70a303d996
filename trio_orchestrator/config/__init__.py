"""Configuration: attrs classes with documented defaults."""

from .model import Config, PipelineConfig
from .secret import Secret

__all__ = ["Config", "PipelineConfig", "Secret"]
