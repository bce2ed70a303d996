"""The upstream is asked to stream exactly when the client streams, whatever it speaks: a
client that takes its answer whole is answered from the upstream's whole answer (one JSON
body: less work for the upstream and the gateway than the same answer as events)."""

from __future__ import annotations

from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def _streamed(gw: Gateway) -> bool:
    """Whether the upstream's last request asked for a stream, in its own wire format."""
    request = gw.last()
    if gw.kind == "bedrock":
        return request.path.endswith("/converse-stream")
    if gw.kind in ("gemini", "vertex"):
        return ":streamGenerateContent" in request.path
    assert isinstance(request.body, dict)
    return request.body.get("stream") is True


def test_a_whole_answer_is_asked_whole_and_a_stream_streamed(gw: Gateway) -> None:
    """The official SDK without and with ``stream``: the upstream's request follows it."""
    gw.script(Behaviour(text="ok"), Behaviour(text="ok"))  # one for each request
    answer = gw.openai().chat.completions.create(model="fake-model", messages=HI)
    assert answer.choices[0].message.content == "ok"
    assert not _streamed(gw)
    if gw.kind == "openai":
        assert "stream_options" not in gw.last().body
    chunks = gw.openai().chat.completions.create(model="fake-model", messages=HI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    assert _streamed(gw)
    if gw.kind == "openai":  # usage is asked for, to be counted
        assert gw.last().body["stream_options"] == {"include_usage": True}
