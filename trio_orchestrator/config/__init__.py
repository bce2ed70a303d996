"""Configuration: attrs classes with documented defaults, a strict TOML loader, a JSON Schema,
and reload while running."""

from .load import dump_config, load_config, parse_config
from .model import Config, PipelineConfig, Range
from .reload import ConfigChange, Reloadable, ReloadReport
from .schema import config_schema
from .secret import Secret
from .signals import reload_on_signal
from .toml_writer import to_toml

__all__ = [
    "Config",
    "ConfigChange",
    "PipelineConfig",
    "Range",
    "ReloadReport",
    "Reloadable",
    "Secret",
    "config_schema",
    "dump_config",
    "load_config",
    "parse_config",
    "reload_on_signal",
    "to_toml",
]
