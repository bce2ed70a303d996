"""The JSON Schema generated from the configuration classes, and the annotated example."""

from __future__ import annotations

import functools
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from config_classes import Provider, Root, config_values
from hypothesis import given, settings

from trio_orchestrator import GenerationParams, PromptRequest
from trio_orchestrator.config import (
    Config,
    Secret,
    config_schema,
    dump_config,
    load_config,
    to_toml,
)
from trio_orchestrator.config.docs import attribute_docs, class_summary
from trio_orchestrator.gateway import open_gateway

EXAMPLE = Path(__file__).parent.parent / "examples" / "config.toml"


@functools.cache
def validator(cls: type = Config) -> jsonschema.Draft202012Validator:
    """A draft 2020-12 validator for ``cls``'s schema."""
    return jsonschema.Draft202012Validator(config_schema(cls))


def errors(instance: object, cls: type = Config) -> list[str]:
    """The schema's complaints about ``instance``."""
    return [error.message for error in validator(cls).iter_errors(instance)]


def test_schema_is_a_valid_2020_12_schema() -> None:
    """The generated schema is itself valid under the draft 2020-12 meta-schema."""
    schema = config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(config_schema(Root))


def test_schema_is_strict_json() -> None:
    """The schema serialises as standard JSON (no Infinity or NaN)."""
    json.dumps(config_schema(Root), allow_nan=False)


def test_example_config_validates() -> None:
    """examples/config.toml passes the schema."""
    assert errors(tomllib.loads(EXAMPLE.read_text())) == []


def test_example_config_loads() -> None:
    """examples/config.toml loads, and its [pipeline] values are the defaults it says."""
    assert load_config(EXAMPLE).pipeline == Config().pipeline


async def test_example_config_runs_as_it_is() -> None:
    """The example's worker (echo behind routing and every layer it enables) answers."""
    config = load_config(EXAMPLE)
    async with open_gateway(config) as gateway:
        answer = await gateway.pipeline.submit(
            PromptRequest(input="hello", params=GenerationParams(model="cheap"))
        )
    assert answer.text == "hello"


def test_example_config_covers_every_section() -> None:
    """Every top-level section of Config is written out in the example."""
    example = tomllib.loads(EXAMPLE.read_text())
    assert sorted(example) == sorted(field.name for field in attrs.fields(Config))


@pytest.mark.parametrize(
    "bad",
    [
        {"pipeline": {"rag_capacity": "5"}},
        {"pipeline": {"rag_capacity": 0}},
        {"pipeline": {"request_timeout": 0}},
        {"pipeline": {"grace_period": -1}},
        {"pipeline": {"rag_capacty": 5}},
        {"pipelines": {}},
    ],
)
def test_bad_config_fails_the_schema(bad: dict[str, Any]) -> None:
    """A configuration the loader refuses is refused by the schema too."""
    assert errors(bad) != []


def test_ranges_come_from_the_validators() -> None:
    """Range validators become minimum / exclusiveMinimum."""
    pipeline = config_schema()["$defs"]["PipelineConfig"]["properties"]
    assert pipeline["rag_capacity"]["minimum"] == 1
    assert pipeline["request_timeout"]["exclusiveMinimum"] == 0
    assert pipeline["grace_period"]["minimum"] == 0


def test_defaults_and_descriptions_come_from_the_classes() -> None:
    """Each option carries its default and its docstring description."""
    option = config_schema()["$defs"]["PipelineConfig"]["properties"]["inference_capacity"]
    assert option["default"] == 1024
    assert option["description"] == "buffer of the inference stage's input channel."


def test_reloadable_options_say_so() -> None:
    """An option marked reloadable says so in its description."""
    option = config_schema()["$defs"]["PipelineConfig"]["properties"]["grace_period"]
    assert option["description"].endswith("Reloadable while running.")


def test_infinite_default_is_described_not_given() -> None:
    """JSON has no infinity: an inf default is stated in the description instead."""
    rate = config_schema(Root)["$defs"]["Limits"]["properties"]["rate"]
    assert "default" not in rate
    assert "Default: inf." in rate["description"]


def test_every_supported_type_maps_to_a_schema() -> None:
    """Secrets, enums, literals, arrays, tables of classes and required keys have schemas."""
    schema = config_schema(Root)
    provider = schema["$defs"]["Provider"]["properties"]
    assert provider["color"]["enum"] == ["red", "blue"]
    assert provider["kind"]["enum"] == ["openai", "anthropic"]
    assert provider["models"] == {
        "type": "array",
        "items": {"type": "string"},
        "default": [],
        "description": "the models it serves.",
    }
    assert {"type": "string"} in provider["api_key"]["anyOf"]
    assert schema["properties"]["providers"]["additionalProperties"] == {"$ref": "#/$defs/Provider"}
    assert schema["$defs"]["Route"]["required"] == ["model"]
    assert schema["$defs"]["Route"]["properties"]["max_tokens"]["minimum"] == 1
    assert all(d["additionalProperties"] is False for d in schema["$defs"].values())


def test_secret_forms_validate() -> None:
    """Literal, "${VAR}" and { env = "VAR" } secrets pass; other tables do not."""
    for key in ("sk-1", "${KEY}", {"env": "KEY"}):
        assert errors({"providers": {"p": {"api_key": key}}}, Root) == []
    assert errors({"providers": {"p": {"api_key": {"file": "/k"}}}}, Root) != []


# A whole config tree per example is costly: a quarter of the profile's examples.
@settings(max_examples=max(10, settings().max_examples // 4))
@given(config_values(Root))
def test_every_valid_config_passes_the_schema(root: Root) -> None:
    """What the classes accept, the schema accepts (dumped configs, as TOML, validate)."""
    # As written in a file: TOML has no null, so an unset optional key is left out.
    data = tomllib.loads(to_toml(dump_config(root, mask_secrets=False)))
    assert errors(data, Root) == []


def _all_attrs_classes(cls: type) -> list[type]:
    """Every configuration class nested in ``cls`` (a secret is a value, not a class here)."""
    attrs.resolve_types(cls)
    nested: list[type] = []
    for field in attrs.fields(cls):
        candidates = [field.type, *getattr(field.type, "__args__", ())]
        for candidate in candidates:
            if attrs.has(candidate) and candidate is not Secret and candidate not in nested:
                nested += [candidate, *_all_attrs_classes(candidate)]
    return nested


def test_every_option_is_documented() -> None:
    """Every option of every configuration class has a description in its docstring."""
    for cls in [Config, *_all_attrs_classes(Config)]:
        documented = attribute_docs(cls)
        assert class_summary(cls), cls
        for field in attrs.fields(cls):
            assert documented.get(field.name), f"{cls.__name__}.{field.name} is undocumented"


def test_attribute_docs_join_continuation_lines() -> None:
    """A description continued on more-indented lines is read as one."""

    class Documented:
        """Summary.

        Attributes:
            first: one line.
            second: starts here
                and continues here.

        Notes:
            not an attribute.
        """

    assert attribute_docs(Documented) == {
        "first": "one line.",
        "second": "starts here and continues here.",
    }


def test_provider_floats_accept_infinity() -> None:
    """The schema accepts TOML's inf where a float is expected."""
    assert errors({"providers": {"p": {"limits": {"rate": math.inf}}}}, Root) == []
    assert Provider().limits.rate == math.inf
