"""``/v1/embeddings`` through the served gateway with the official ``openai`` SDK to an AWS
Bedrock upstream: the request becomes InvokeModel calls in the model family's shape (Titan
Text Embeddings: one call per input; Cohere Embed: the texts in one call), the vectors come
back in input order as floats or base64, and what Bedrock cannot take is a 400."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.embeddings import fake_vector

from .conftest import Gateway, start_gateway

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-multilingual-v3"
((KEY_ID, SECRET),) = CREDENTIALS.items()


@pytest.fixture(scope="module")
def upstream_kind() -> str:
    """Only the Bedrock upstream (a Bedrock API key as the bearer)."""
    return "bedrock"


def float32(values: Any) -> list[float]:
    """``values`` rounded to float32, as a base64 answer carries them."""
    return array.array("f", values).tolist()


def decode(text: str) -> list[float]:
    """A base64 vector (little-endian float32) as floats."""
    values = array.array("f", base64.b64decode(text))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def test_titan_answers_each_input_in_order_with_its_usage(gw: Gateway) -> None:
    """Three inputs to Titan V2 are three InvokeModel calls; the answer has the three
    vectors in input order and prompt_tokens summed from inputTextTokenCount."""
    texts = ["alpha", "beta gamma", "delta epsilon zeta"]
    answer = gw.openai().embeddings.create(
        model=TITAN, input=texts, dimensions=256, encoding_format="float"
    )
    calls = gw.received()
    assert [c.path for c in calls] == [f"/model/{TITAN}/invoke"] * 3
    assert sorted(c.body["inputText"] for c in calls) == sorted(texts)
    assert {c.body["dimensions"] for c in calls} == {256}
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert [d.embedding for d in answer.data] == [
        pytest.approx(list(fake_vector(t, 256))) for t in texts
    ]
    assert answer.usage.prompt_tokens == 6
    assert answer.model == TITAN


def test_cohere_answers_in_base64(gw: Gateway) -> None:
    """Cohere Embed gets the texts in one call with input_type; a base64 request gets the
    vectors as float32 base64 (the SDK's default)."""
    answer = gw.openai().embeddings.create(model=COHERE, input=["hola", "mundo"])
    assert gw.last().body == {"texts": ["hola", "mundo"], "input_type": "search_document"}
    assert len(gw.received()) == 1
    assert [d.embedding for d in answer.data] == [
        pytest.approx(float32(fake_vector(t, 1024))) for t in ("hola", "mundo")
    ]
    raw: Any = gw.openai().embeddings.create(model=COHERE, input="x", encoding_format="base64")
    assert decode(raw.data[0].embedding) == float32(fake_vector("x", 1024))


def test_cohere_usage_is_the_token_count_header_of_each_call(gw: Gateway) -> None:
    """Cohere's answer body counts no tokens: usage is the sum of each InvokeModel call's
    X-Amzn-Bedrock-Input-Token-Count header (100 texts: two calls, 96 and 4)."""
    texts = [f"word {i}" for i in range(100)]  # two words each, by the fake's count
    answer = gw.openai().embeddings.create(model=COHERE, input=texts, encoding_format="float")
    assert sorted(len(c.body["texts"]) for c in gw.received()) == [4, 96]
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (200, 200)


def test_titans_usage_is_the_header_when_it_differs_from_the_body(gw: Gateway) -> None:
    """The header is the count Bedrock bills: it wins over Titan's inputTextTokenCount."""
    body = {"embedding": [0.5, 0.5], "inputTextTokenCount": 3}
    gw.script(Behaviour(body=body, headers={"X-Amzn-Bedrock-Input-Token-Count": "5"}))
    answer = gw.openai().embeddings.create(model=TITAN, input="x y z", encoding_format="float")
    assert answer.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"model": TITAN, "input": "x", "dimensions": 300}, "256, 512 or 1024"),
        ({"model": TITAN, "input": [[1, 2, 3]]}, "not tokens"),
        ({"model": "meta.llama3-8b-instruct-v1:0", "input": "x"}, "Cohere Embed"),
    ],
)
def test_what_bedrock_cannot_embed_is_a_400_and_nothing_is_sent(
    gw: Gateway, options: dict[str, Any], words: str
) -> None:
    """Titan dimensions other than 256/512/1024, token inputs and a model of no embedding
    family are each a 400 saying why; the upstream receives nothing."""
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().embeddings.create(encoding_format="float", **options)
    assert words in caught.value.message
    assert gw.received() == []


def test_bedrocks_error_reaches_the_client_as_its_typed_error(gw: Gateway) -> None:
    """An InvokeModel answered by Bedrock's ResourceNotFoundException (x-amzn-ErrorType) is
    a 404 for the client."""
    gw.script(Behaviour(status=404))
    with pytest.raises(openai.NotFoundError) as caught:
        gw.openai().embeddings.create(model=TITAN, input="x", encoding_format="float")
    assert "ResourceNotFoundException" in caught.value.message


def signed(fake: FakeProvider) -> Config:
    """One Bedrock provider signing with SigV4 (the fake checks the signature)."""
    upstream = ProviderConfig(
        "bedrock",
        "aws",
        fake.base_url,
        region="us-west-2",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    return Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0))


@pytest.fixture(scope="module")
def signed_gateway() -> Iterator[Gateway]:
    """The gateway in front of Bedrock, signing with SigV4."""
    running = start_gateway("bedrock", signed)
    try:
        yield running.gateway
    finally:
        running.stop()


def test_invoke_model_calls_are_signed_with_sigv4(signed_gateway: Gateway) -> None:
    """Each InvokeModel call carries a SigV4 signature the fake verifies (a wrong one
    would be a 403 InvalidSignatureException)."""
    signed_gateway.clear()
    answer = signed_gateway.openai().embeddings.create(
        model=TITAN, input=["a", "b"], encoding_format="float"
    )
    assert len(answer.data) == 2
    calls = signed_gateway.received()
    assert all(c.headers["authorization"].startswith("AWS4-HMAC-SHA256 ") for c in calls)
