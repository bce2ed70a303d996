"""Configuration: attrs classes with documented defaults."""

from .model import Config, PipelineConfig

__all__ = ["Config", "PipelineConfig"]
