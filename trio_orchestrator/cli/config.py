"""``trio-orchestrator config check FILE`` and ``trio-orchestrator config schema``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from ..config import Config, config_schema, dump_config, load_config, to_toml
from ..errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``config`` command and its ``check`` and ``schema`` subcommands."""
    parser = subparsers.add_parser("config", help="validate a configuration, print its schema")
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate FILE and print the effective configuration (secrets masked)"
    )
    check.add_argument("file", metavar="FILE", help="a TOML configuration file")
    check.add_argument("--format", choices=("toml", "json"), default="toml")
    check.set_defaults(func=run_check)
    schema = commands.add_parser("schema", help="print the configuration's JSON Schema")
    schema.set_defaults(func=run_schema)


def environment_problems(config: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """What the configuration reads from the environment when the service starts and is not
    there: each provider's ``api_key_env`` (``"${VAR}"`` secrets are checked as the file
    loads), one line per problem naming its key path.

    Args:
        config: the configuration.
        env: the environment (default: ``os.environ``).
    """
    env = os.environ if env is None else env
    providers = () if config.providers is None else config.providers.providers
    return [
        f"providers.providers[{i}].api_key_env: the environment variable "
        f"{provider.api_key_env} is not set; set it, or remove the key"
        for i, provider in enumerate(providers)
        if provider.api_key_env and not env.get(provider.api_key_env)
    ]


def load_checked(path: str) -> Config:
    """Load ``path`` and check what it reads from the environment, as serving would.

    Raises:
        ConfigError: every problem of the file, or every variable it needs and lacks.
    """
    config = load_config(path)
    problems = environment_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def run_check(args: argparse.Namespace) -> int:
    """Print the effective configuration; on a bad file, every problem and exit status 1."""
    try:
        config = load_checked(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    data = dump_config(config, mask_secrets=True)
    if args.format == "json":
        print(json.dumps(_json_safe(data), indent=2, allow_nan=False))
    else:
        print(to_toml(data), end="")
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the configuration."""
    print(json.dumps(config_schema(), indent=2, allow_nan=False, ensure_ascii=False))
    return 0


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: write ``inf`` (no limit) as the string ``"inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
