"""LangChain's ``ChatOpenAI(...).with_structured_output(Model)`` through the gateway.

Structured output is the feature most often lost by a gateway that drops members: LangChain
sends ``response_format`` (a strict JSON Schema) or a forced tool call, and parses the answer
into the caller's pydantic model.
"""

from __future__ import annotations

import pydantic
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

langchain_openai = pytest.importorskip("langchain_openai")


class Person(pydantic.BaseModel):
    """Someone the model read about."""

    name: str
    age: int


ADA = '{"name": "Ada", "age": 36}'


def chat_model(gw: Gateway) -> object:
    """LangChain's ChatOpenAI pointed at the gateway."""
    if gw.kind != "openai":
        pytest.skip("the structured-output members are asserted against an OpenAI upstream")
    return langchain_openai.ChatOpenAI(
        model="fake-model", base_url=gw.url + "/v1", api_key="sk-client", max_retries=0
    )


def test_structured_output_by_json_schema(gw: Gateway) -> None:
    """The upstream gets LangChain's json_schema response_format; the Person comes back."""
    model = chat_model(gw).with_structured_output(Person, method="json_schema")  # type: ignore[attr-defined]
    gw.script(Behaviour(text=ADA))
    assert model.invoke("Who wrote the first program?") == Person(name="Ada", age=36)
    response_format = gw.last().body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Person"
    assert response_format["json_schema"]["schema"]["required"] == ["name", "age"]


def test_structured_output_by_function_calling(gw: Gateway) -> None:
    """The upstream gets the Person tool and a forced tool_choice; the Person comes back."""
    model = chat_model(gw).with_structured_output(Person, method="function_calling")  # type: ignore[attr-defined]
    gw.script(Behaviour(tool_calls=(("Person", ADA),)))
    assert model.invoke("Who wrote the first program?") == Person(name="Ada", age=36)
    body = gw.last().body
    assert [tool["function"]["name"] for tool in body["tools"]] == ["Person"]
    assert body["tool_choice"]["function"]["name"] == "Person"
