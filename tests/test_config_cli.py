"""``trio-orchestrator config check`` and ``trio-orchestrator config schema``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from trio_orchestrator.cli import main
from trio_orchestrator.config import Config, PipelineConfig, config_schema, parse_config

BAD = '[pipeline]\nrag_capacity = "5"\ngrace_period = -1\ntypo = 1\n'


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid configuration file setting two options."""
    path = tmp_path / "good.toml"
    path.write_text("[pipeline]\nrag_capacity = 9\nrequest_timeout = inf\n")
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A configuration file with three problems."""
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


def test_check_prints_the_effective_configuration_as_toml(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check prints the whole effective configuration, which loads back as the same."""
    assert main(["config", "check", str(good)]) == 0
    printed = capsys.readouterr().out
    expected = Config(PipelineConfig(rag_capacity=9, request_timeout=float("inf")))
    assert parse_config(printed) == expected
    assert "dead_letter_capacity = 1000" in printed  # defaults are shown too


def test_check_prints_json(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json prints standard JSON, infinity written as "inf"."""
    assert main(["config", "check", "--format", "json", str(good)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pipeline"]["rag_capacity"] == 9
    assert data["pipeline"]["request_timeout"] == "inf"


def test_check_lists_every_problem_and_exits_1(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file exits 1 with every problem on stderr and nothing on stdout."""
    assert main(["config", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{bad}: invalid configuration",
        "  pipeline.rag_capacity: expected a whole number, found the string '5'",
        "  pipeline.grace_period: expected a number of seconds ≥ 0, found the number -1.0",
        "  pipeline.typo: unknown key; expected one of: "
        + ", ".join(field.name for field in attrs.fields(PipelineConfig)),
    ]


def test_check_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist is reported, not raised."""
    assert main(["config", "check", str(tmp_path / "absent.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """schema prints the generated JSON Schema."""
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


def test_check_runs_as_a_module_without_traceback(bad: Path) -> None:
    """`python -m trio_orchestrator config check` of a bad file: exit 1, problems, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_orchestrator", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "pipeline.rag_capacity: expected a whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_accepts_a_set_api_key_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the variable set, api_key_env passes and the key is masked in the output."""
    monkeypatch.setenv("TRIO_ORCHESTRATOR_TEST_SET_KEY", "sk-secret")
    path = tmp_path / "set.toml"
    path.write_text(
        '[[providers.providers]]\nkind = "openai"\napi_key_env = "TRIO_ORCHESTRATOR_TEST_SET_KEY"\n'
    )
    assert main(["config", "check", str(path)]) == 0
    assert "sk-secret" not in capsys.readouterr().out


def test_check_refuses_an_unset_api_key_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An api_key_env naming an unset variable fails the check, naming the key path."""
    monkeypatch.delenv("TRIO_ORCHESTRATOR_TEST_UNSET_KEY", raising=False)
    path = tmp_path / "unset.toml"
    path.write_text(
        '[[providers.providers]]\nkind = "openai"\n'
        'api_key_env = "TRIO_ORCHESTRATOR_TEST_UNSET_KEY"\n'
    )
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "providers.providers[0].api_key_env: the environment variable" in err
    assert "TRIO_ORCHESTRATOR_TEST_UNSET_KEY" in err
