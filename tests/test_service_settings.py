"""The stand-in configuration loader and the service's configuration classes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.service import load_config


def test_load_config_reads_service_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key written as ${ENV_VAR} is read from the environment, and only its digest kept."""
    monkeypatch.setenv("GATEWAY_KEY", "from-env")
    path = tmp_path / "c.toml"
    path.write_text(
        '[service]\nport = 9000\n[[service.api_keys]]\nname = "app"\nkey = "${GATEWAY_KEY}"\n'
    )
    config = load_config(path)
    assert config.service.port == 9000
    assert config.service.api_keys[0].digest() == hashlib.sha256(b"from-env").digest()


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    """An unknown key is a ConfigError that names it."""
    path = tmp_path / "c.toml"
    path.write_text("[service]\nmax_body = 1\n")
    with pytest.raises(ConfigError, match="max_body"):
        load_config(path)


def test_out_of_range_values_are_errors(tmp_path: Path) -> None:
    """A port out of range is a ConfigError."""
    path = tmp_path / "c.toml"
    path.write_text("[service]\nport = 70000\n")
    with pytest.raises(ConfigError, match="port"):
        load_config(path)


def test_an_api_key_needs_exactly_one_of_key_or_digest() -> None:
    """An API key with neither (or both) the key and its digest is rejected."""
    with pytest.raises(ValueError, match="exactly one"):
        ApiKeyConfig("nothing")


def test_a_digest_must_be_sha256_hex() -> None:
    """A digest that is not 64 hex digits is rejected."""
    with pytest.raises(ValueError, match="sha256"):
        ApiKeyConfig("short", sha256="abc")


def test_an_empty_key_is_refused_not_an_open_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key that is empty -- written so, read from an empty environment variable, or given
    as the digest of "" -- is a ConfigError naming the key: it would let in any request
    whose bearer token is empty."""
    monkeypatch.setenv("GATEWAY_KEY", "")
    empty_digest = hashlib.sha256(b"").hexdigest()
    for member in ('key = ""', 'key = "${GATEWAY_KEY}"', f'sha256 = "{empty_digest}"'):
        path = tmp_path / "c.toml"
        path.write_text(f'[service]\n[[service.api_keys]]\nname = "app"\n{member}\n')
        with pytest.raises(ConfigError, match=r"api_keys\[0\].* empty"):
            load_config(path)
