"""The strict TOML loader: every kind of error, all at once, each naming its key path."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
from config_classes import Color, Limits, Provider, Root, Route, Window, config_values
from hypothesis import given, settings

from trio_orchestrator.config import (
    Config,
    PipelineConfig,
    Secret,
    dump_config,
    load_config,
    parse_config,
    to_toml,
)
from trio_orchestrator.errors import ConfigError


def problems(source: str | dict[str, Any], cls: type = Root, **env: str) -> list[str]:
    """The problems ``parse_config`` reports for ``source``."""
    with pytest.raises(ConfigError) as caught:
        parse_config(source, cls, env=env)
    return caught.value.problems


def test_empty_file_gives_defaults() -> None:
    """An empty file is a valid configuration: every option takes its default."""
    assert parse_config("") == Config()


def test_values_are_loaded() -> None:
    """Options written in the file replace the defaults."""
    config = parse_config("[pipeline]\nrag_capacity = 8\ngrace_period = 2.5\n")
    assert config.pipeline == PipelineConfig(rag_capacity=8, grace_period=2.5)


def test_dict_source_is_accepted() -> None:
    """An already-parsed mapping loads like the equivalent TOML."""
    assert parse_config({"pipeline": {"stream_buffer": 3}}).pipeline.stream_buffer == 3


def test_unknown_key_suggests_the_known_one() -> None:
    """A misspelt key is an error naming its path and the key it probably meant."""
    assert problems("[pipeline]\nrag_capacty = 5\n", Config) == [
        "pipeline.rag_capacty: unknown key; did you mean 'rag_capacity'?"
    ]


def test_unknown_section_lists_the_known_keys() -> None:
    """An unknown key unlike any known one lists what is expected there."""
    known = ", ".join(field.name for field in attrs.fields(Config))
    assert problems("[zzz]\n", Config) == [f"zzz: unknown key; expected one of: {known}"]


def test_string_is_not_a_whole_number() -> None:
    """A number written as a string is refused, not converted."""
    assert problems('[pipeline]\nrag_capacity = "5"\n', Config) == [
        "pipeline.rag_capacity: expected a whole number, found the string '5'"
    ]


def test_fraction_is_not_truncated() -> None:
    """A fraction where a whole number is expected is refused, not truncated."""
    assert problems("[pipeline]\nrag_capacity = 5.5\n", Config) == [
        "pipeline.rag_capacity: expected a whole number, found the number 5.5"
    ]


def test_boolean_is_not_a_number() -> None:
    """``true`` is not accepted as the number 1."""
    assert problems("[pipeline]\ngrace_period = true\n", Config) == [
        "pipeline.grace_period: expected a number, found the boolean true"
    ]


def test_string_is_not_a_number() -> None:
    """A string is not accepted where seconds are expected."""
    assert problems('[pipeline]\nrequest_timeout = "30"\n', Config) == [
        "pipeline.request_timeout: expected a number, found the string '30'"
    ]


def test_whole_number_is_a_fine_number() -> None:
    """A whole number where a number is expected loads as a float."""
    timeout = parse_config("[pipeline]\nrequest_timeout = 30\n").pipeline.request_timeout
    assert (timeout, type(timeout)) == (30.0, float)


def test_infinity_means_no_limit() -> None:
    """TOML's ``inf`` is accepted for a timeout (no limit)."""
    assert parse_config("[pipeline]\nrequest_timeout = inf\n").pipeline.request_timeout == math.inf


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "rag_capacity = 0",
            "pipeline.rag_capacity: expected a whole number ≥ 1, found the whole number 0",
        ),
        (
            "stream_buffer = -3",
            "pipeline.stream_buffer: expected a whole number ≥ 1, found the whole number -3",
        ),
        (
            "request_timeout = 0",
            "pipeline.request_timeout: expected a number of seconds > 0 "
            "(inf for no limit), found the number 0.0",
        ),
        (
            "grace_period = -1.5",
            "pipeline.grace_period: expected a number of seconds ≥ 0, found the number -1.5",
        ),
        (
            "grace_period = nan",
            "pipeline.grace_period: expected a number of seconds ≥ 0, found the number nan",
        ),
    ],
)
def test_ranges_are_checked(line: str, problem: str) -> None:
    """A value of the right type but out of range is refused with the range in words."""
    assert problems(f"[pipeline]\n{line}\n", Config) == [problem]


def test_all_errors_are_reported_at_once() -> None:
    """Every problem in the file is reported together, in one ConfigError."""
    text = """
        colour = "red"
        [pipeline]
        rag_capacity = "5"
        post_capacity = 0
        grace_period = -1
        [providers.openai]
        kind = "azure"
        models = "gpt-4o"
        [providers.openai.limits]
        burst = 2.5
        [[routes]]
        model = "a"
        [[routes]]
        model = "b"
        weight = 0
    """
    assert problems(text) == [
        "pipeline.rag_capacity: expected a whole number, found the string '5'",
        "pipeline.post_capacity: expected a whole number ≥ 1, found the whole number 0",
        "pipeline.grace_period: expected a number of seconds ≥ 0, found the number -1.0",
        "providers.openai.models: expected an array, found the string 'gpt-4o'",
        "providers.openai.kind: expected one of 'openai', 'anthropic', found the string 'azure'",
        "providers.openai.limits.burst: expected a whole number, found the number 2.5",
        "routes[1].weight: expected a whole number ≥ 1, found the whole number 0",
        "colour: unknown key; expected one of: pipeline, providers, routes, window",
    ]


def test_dict_keys_that_are_not_bare_are_quoted_in_paths() -> None:
    """A table key with spaces appears quoted in the key path, as TOML would write it."""
    text = '[providers."my provider"]\nenabled = "yes"\n'
    assert problems(text) == [
        "providers.\"my provider\".enabled: expected true or false, found the string 'yes'"
    ]


def test_table_expected() -> None:
    """A value where a table is expected says so."""
    assert problems("pipeline = 5\n", Config) == [
        "pipeline: expected a table, found the whole number 5"
    ]


def test_array_items_are_checked_one_by_one() -> None:
    """Each bad element of an array is reported with its index."""
    assert problems('[providers.p]\ntimeouts = [1, "2", true]\n') == [
        "providers.p.timeouts[1]: expected a number, found the string '2'",
        "providers.p.timeouts[2]: expected a number, found the boolean true",
    ]


def test_enum_values_are_listed() -> None:
    """A value outside an enum lists the values it accepts."""
    assert problems('[providers.p]\ncolor = "green"\n') == [
        "providers.p.color: expected one of 'red', 'blue', found the string 'green'"
    ]


def test_enum_and_literal_values_load() -> None:
    """Enum and Literal options load from their written values."""
    root = parse_config('[providers.p]\ncolor = "blue"\nkind = "anthropic"\n', Root)
    assert (root.providers["p"].color, root.providers["p"].kind) == (Color.BLUE, "anthropic")


def test_missing_required_key() -> None:
    """An option without a default must be present; its absence names the key."""
    assert problems("[[routes]]\nweight = 2\n") == [
        "routes[0].model: missing; this option has no default, so it must be set"
    ]


def test_cross_field_check_is_reported_at_the_table() -> None:
    """A validator comparing two options (it needs the instance) names the table."""
    assert problems("[window]\nlow = 5\nhigh = 1\n") == [
        "window: high (1) must be at least low (5)"
    ]


def test_optional_validator_checks_a_given_value() -> None:
    """An optional option's range is checked when it is given, and unset is fine."""
    assert problems('[[routes]]\nmodel = "m"\nmax_tokens = 0\n') == [
        "routes[0].max_tokens: expected a whole number ≥ 1, found the whole number 0"
    ]
    assert parse_config('[[routes]]\nmodel = "m"\n', Root).routes[0].max_tokens is None


def test_not_toml() -> None:
    """Text that is not TOML is one problem saying where the syntax broke."""
    [problem] = problems("[pipeline\n", Config)
    assert problem.startswith("not valid TOML:")
    assert "line 1" in problem


def test_secret_literal() -> None:
    """A secret written literally is loaded as a Secret."""
    root = parse_config('[providers.p]\napi_key = "sk-123"\n', Root)
    assert root.providers["p"].api_key == Secret("sk-123")


def test_secret_from_environment_reference() -> None:
    """``"${VAR}"`` reads the secret from the environment."""
    root = parse_config('[providers.p]\napi_key = "${KEY}"\n', Root, env={"KEY": "sk-env"})
    assert root.providers["p"].api_key == Secret("sk-env")


def test_secret_from_explicit_env_table() -> None:
    """``{ env = "VAR" }`` reads the secret from the environment."""
    text = '[providers.p]\napi_key = { env = "KEY" }\n'
    assert parse_config(text, Root, env={"KEY": "sk-t"}).providers["p"].api_key == Secret("sk-t")


def test_missing_environment_variable_names_key_and_variable() -> None:
    """An unset variable is an error naming the key path and the variable."""
    assert problems('[providers.p]\napi_key = "${OPENAI_API_KEY}"\n') == [
        "providers.p.api_key: the environment variable OPENAI_API_KEY is not set; set it, "
        "or write the secret here"
    ]


def test_empty_environment_variable_is_an_error() -> None:
    """A variable set to the empty string is not a usable secret."""
    assert problems('[providers.p]\napi_key = { env = "K" }\n', K="") == [
        "providers.p.api_key: the environment variable K is set but empty"
    ]


def test_secret_of_wrong_type() -> None:
    """A number where a secret is expected lists the accepted forms."""
    [problem] = problems("[providers.p]\napi_key = 5\n")
    assert problem.startswith("providers.p.api_key: expected a string")
    assert "env" in problem


def test_errors_never_show_a_secret() -> None:
    """A problem elsewhere in a provider does not leak its key into the message."""
    text = '[providers.p]\napi_key = "sk-very-secret"\nenabled = 1\n'
    assert "sk-very-secret" not in "\n".join(problems(text))


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """load_config reads a TOML file."""
    path = tmp_path / "c.toml"
    path.write_text("[pipeline]\ninference_concurrency = 7\n")
    assert load_config(path).pipeline.inference_concurrency == 7


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it, not an OSError."""
    with pytest.raises(ConfigError, match=r"cannot read .*absent\.toml"):
        load_config(tmp_path / "absent.toml")


def test_dump_masks_secrets() -> None:
    """Dumped secrets are masked unless asked otherwise."""
    root = Root(providers={"p": Provider(api_key=Secret("sk-1"))})
    assert dump_config(root)["providers"]["p"]["api_key"] == "***"
    assert dump_config(root, mask_secrets=False)["providers"]["p"]["api_key"] == "sk-1"


def test_secret_that_looks_like_a_reference_round_trips() -> None:
    """A literal secret shaped like ``${X}`` dumps in a form that loads back as itself."""
    root = Root(providers={"p": Provider(api_key=Secret("${X}"))})
    assert parse_config(dump_config(root, mask_secrets=False), Root, env={}) == root


def test_dump_writes_plain_values() -> None:
    """Dumps hold enum values and lists, readable as TOML."""
    root = Root(providers={"p": Provider(models=("a",), color=Color.BLUE, limits=Limits())})
    data = dump_config(root)
    assert data["providers"]["p"]["models"] == ["a"]
    assert data["providers"]["p"]["color"] == "blue"
    assert tomllib.loads(to_toml(data))["providers"]["p"]["limits"]["rate"] == math.inf


# A whole config tree per example is costly: a quarter of the profile's examples.
@settings(max_examples=max(10, settings().max_examples // 4))
@given(config_values(Root))
def test_dump_then_parse_round_trips(root: Root) -> None:
    """parse_config(dump_config(c, mask_secrets=False)) == c for generated valid configs."""
    assert parse_config(dump_config(root, mask_secrets=False), Root, env={}) == root


# A whole config tree per example is costly: a quarter of the profile's examples.
@settings(max_examples=max(10, settings().max_examples // 4))
@given(config_values(Root))
def test_toml_round_trips(root: Root) -> None:
    """A dumped configuration written as TOML loads back as the same configuration."""
    assert parse_config(to_toml(dump_config(root, mask_secrets=False)), Root, env={}) == root


def test_route_and_window_classes_are_exercised() -> None:
    """The array-of-tables and cross-checked classes load from TOML."""
    text = '[[routes]]\nmodel = "m"\nweight = 3\n[window]\nlow = 1\n'
    root = parse_config(text, Root)
    assert (root.routes, root.window) == ([Route("m", 3)], Window(1, 10))
