"""``trio-orchestrator chat`` in a pseudo-terminal: streamed answers and their statistics, the
commands, Ctrl-C stopping an answer (and its upstream call) but not the chat, Ctrl-D leaving."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import trio
from terminal import open_terminal, serve_process

from trio_orchestrator.cli.chat import AnswerStats, Chat, Conversation, api_root
from trio_orchestrator.errors import ModelNotFound
from trio_orchestrator.events import Usage
from trio_orchestrator.observability.config import ModelPrice
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers.base import EventSink

STATS = r"\[latency [0-9.]+ m?s · first token [0-9.]+ m?s · tokens \d+ in / \d+ out · cost "


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chat.toml"
    path.write_text(text)
    return path


async def test_a_question_gets_a_streamed_answer_and_its_statistics(tmp_path: Path) -> None:
    """The echo gateway in process answers a question, then shows latency, first token,
    tokens and the cost its configured price gives."""
    config = _config(
        tmp_path,
        "[observability.metrics.prices]\necho = { input_per_million = 1000.0, "
        "output_per_million = 2000.0 }\n",
    )
    async with open_terminal("chat", "--config", str(config)) as term:
        await term.expect("Chatting with echo")
        await term.expect("you> ")
        await term.line("three little words")
        await term.expect("echo> three little words")
        stats = await term.expect(STATS + r"\$0\.\d+\]")
        assert "cost n/a" not in stats
        await term.expect("you> ")
        await term.send("\x04")  # Ctrl-D quits
        assert await term.finish() == 0


async def test_the_commands_model_system_reset_save_help(tmp_path: Path) -> None:
    """/system, /model, /save (a Chat Completions body), /reset and /help do what they say;
    Ctrl-C at the prompt only says how to leave; /quit leaves; without prices, cost n/a."""
    saved = tmp_path / "out" / "conversation.json"
    async with open_terminal("chat") as term:
        await term.expect("you> ")
        await term.send("\x03")  # Ctrl-C at the prompt: a hint, not an exit
        await term.expect(r"\(Ctrl-D or /quit leaves\)")
        await term.line("/system Be brief.")
        await term.expect("system prompt set")
        await term.line("hello there")
        await term.expect("echo> hello there")
        await term.expect(STATS + r"n/a\]")
        await term.line("/model")
        await term.expect(r"model: echo \(served: echo\)")
        await term.line(f"/save {saved}")
        await term.expect("saved 2 messages")
        await term.line("/reset")
        await term.expect("conversation forgotten")
        await term.line("/model other")
        await term.expect("model: other")
        await term.line("/help")
        await term.expect("/save FILE")
        await term.line("/quit")
        assert await term.finish() == 0
    assert json.loads(saved.read_text()) == {
        "model": "echo",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hello there"},
        ],
    }


async def test_ctrl_c_stops_the_answer_not_the_chat(tmp_path: Path) -> None:
    """Ctrl-C mid-answer (the echo worker writing a token every 0.2 s) returns to the prompt
    at once, and the next question is answered."""
    config = _config(tmp_path, "[service.echo]\ntoken_delay = 0.2\n")
    words = " ".join(f"w{i}" for i in range(200))  # 40 s of answer if not stopped
    async with open_terminal("chat", "--config", str(config)) as term:
        await term.expect("you> ")
        await term.line(words)
        await term.expect("echo> w0 w1")
        await term.send("\x03")
        await term.expect(r"\[stopped\] \[latency")
        await term.expect("you> ")
        await term.line("/system Short.")  # the prompt reads again after the stop
        await term.expect("system prompt set")
        await term.line("/quit")
        assert await term.finish() == 0
    answer = term.text().split("echo> ")[1].split("[stopped]")[0]
    assert "w199" not in answer


async def test_ctrl_c_over_http_closes_the_upstream_call(tmp_path: Path) -> None:
    """With --url, Ctrl-C cancels the HTTP stream, and the service then cancels its call to
    the provider: the fake provider sees its client go away; the next question is answered."""
    async with open_fake_provider(Behaviour(tokens=200, token_delay=0.2)) as fake:
        config = _config(
            tmp_path,
            f'[[providers.providers]]\nkind = "openai"\nbase_url = "{fake.openai_base_url}"\n',
        )
        async with (
            serve_process(config) as served,
            open_terminal("chat", "--url", served.url, "--model", "m") as term,
        ):
            await term.expect("Chatting with m at http")
            await term.line("tell me a long story")
            await term.expect(r"m> lorem ipsum")
            await term.send("\x03")
            await term.expect(r"\[stopped\]")
            with trio.fail_after(10):
                await fake.wait_for_disconnects(1)
            fake.script(Behaviour(text="short answer"))
            await term.line("again, briefly")
            await term.expect("m> short answer")
            await term.expect(STATS + r"n/a\]")
            await term.send("\x04")
            assert await term.finish() == 0
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_an_unreachable_url_is_one_line_not_a_traceback() -> None:
    """chat --url naming nothing listening exits 2 with a one-line reason."""
    async with open_terminal("chat", "--url", "http://127.0.0.1:9") as term:
        status = await term.finish()
    assert status == 2
    assert "cannot start" in term.text()
    assert "Traceback" not in term.text()


def test_statistics_line_and_conversation_body() -> None:
    """The statistics line reads latency, first token, tokens and cost (n/a when unknown),
    and a conversation is a Chat Completions body; the API root gets its /v1 once."""
    usage = Usage(input_tokens=1000, output_tokens=500)
    priced = AnswerStats(1.5, 0.25, usage, ModelPrice(1.0, 2.0))
    assert priced.line() == (
        "[latency 1.50 s · first token 250 ms · tokens 1000 in / 500 out · cost $0.002000]"
    )
    assert AnswerStats(0.1, None, None, None).line().endswith("tokens n/a · cost n/a]")
    assert Conversation("m", "sys").to_json()["messages"] == [{"role": "system", "content": "sys"}]
    assert api_root("http://h:1/") == api_root("http://h:1/v1") == "http://h:1/v1"


@attrs.define
class _Refusing:
    label: str = "nowhere"
    prices: dict[str, ModelPrice] = attrs.field(factory=dict)

    async def models(self) -> list[str]:
        return []

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        raise ModelNotFound("no such model: m", provider="gateway", status=404)


async def test_a_failed_answer_is_one_line_and_leaves_the_question_out() -> None:
    """An error answer prints one ``error:`` line, and the question is not kept, so the
    conversation does not ask it twice."""
    written: list[str] = []
    chat = Chat(_Refusing(), Conversation("m"), write=written.append)
    await chat.answer("anyone there?")
    assert "error: no such model: m\n" in "".join(written)
    assert chat.conversation.turns == []
