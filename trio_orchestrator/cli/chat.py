"""``trio-orchestrator chat``: talk to a gateway in the terminal, answers streamed token by token.

::

    trio-orchestrator chat --url http://127.0.0.1:8000      # a running service
    trio-orchestrator chat --config gateway.toml            # a gateway in this process
    trio-orchestrator chat                                  # the offline echo worker

With ``--url`` it speaks the service's OpenAI-compatible ``/v1/chat/completions`` over HTTP
(streamed, with ``stream_options: {"include_usage": true}``); otherwise it opens the gateway
in this process (:func:`~trio_orchestrator.open_gateway`). It keeps the conversation, and
after each answer shows its latency, time to first token, tokens, and cost when the
configuration's ``[observability.metrics] prices`` knows the model.

Commands: ``/model NAME``, ``/system TEXT``, ``/reset``, ``/save FILE``, ``/help``, ``/quit``.
Ctrl-C stops the answer being written (and its upstream call) and returns to the prompt;
Ctrl-D quits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from ..catalogue import Catalogue
from ..config import Config
from ..errors import ConfigError, OrchestratorError
from ..events import StreamEvent, TextDelta, ToolCallStart, Usage
from ..gateway import Gateway, open_gateway
from ..observability.config import ModelPrice
from ..types import GenerationParams, Message, PromptRequest
from ..workers.base import EventSink
from ..workers.config import ProviderConfig
from ..workers.factory import make_client, worker_for
from ..workers.openai import OpenAIWorker
from .config import load_checked

__all__ = ["AnswerStats", "Conversation", "register"]

HELP = """\
  /model NAME   ask NAME from now on (/model alone: the current one and the models served)
  /system TEXT  set the system prompt (/system alone: remove it)
  /reset        forget the conversation (the system prompt stays)
  /save FILE    write the conversation as JSON (a Chat Completions request body)
  /help         this list
  /quit         leave (or Ctrl-D); Ctrl-C stops an answer, not the chat"""


@attrs.define
class Conversation:
    """The chat so far.

    Args:
        model: the model asked.
        system: the system prompt, or ``None``.
        turns: the user and assistant messages, in order.
    """

    model: str
    system: str | None = None
    turns: list[Message] = attrs.field(factory=list)

    def messages(self) -> tuple[Message, ...]:
        """The messages to send: the system prompt, then the turns."""
        first = () if self.system is None else (Message("system", self.system),)
        return (*first, *self.turns)

    def request(self, max_tokens: int | None) -> PromptRequest:
        """The request asking the next answer."""
        return PromptRequest(self.messages(), params=GenerationParams(self.model, max_tokens))

    def to_json(self) -> dict[str, Any]:
        """The conversation as a Chat Completions request body."""
        messages = [{"role": m.role, "content": m.content} for m in self.messages()]
        return {"model": self.model, "messages": messages}


@attrs.frozen
class AnswerStats:
    """What one answer took.

    Attributes:
        latency: seconds from asking to the last event.
        first_token: seconds to the first text, or ``None`` (none came).
        usage: the token counts reported, or ``None``.
        price: the model's price, or ``None`` (unknown).
    """

    latency: float
    first_token: float | None
    usage: Usage | None
    price: ModelPrice | None

    def line(self) -> str:
        """One line: latency, time to first token, tokens and cost."""
        parts = [f"latency {_duration(self.latency)}"]
        first = "n/a" if self.first_token is None else _duration(self.first_token)
        parts.append(f"first token {first}")
        if self.usage is None:
            parts += ["tokens n/a", "cost n/a"]
        else:
            u = self.usage
            parts.append(f"tokens {u.input_tokens} in / {u.output_tokens} out")
            cost = None
            if self.price is not None:
                cost = self.price.cost(u.input_tokens, u.output_tokens, u.cached_input_tokens)
            parts.append("cost n/a" if cost is None else f"cost ${cost:.6f}")
        return "[" + " · ".join(parts) + "]"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class Backend(Protocol):
    """Where answers come from: a service over HTTP, or a gateway in this process."""

    @property
    def label(self) -> str:
        """Where it is, for the greeting."""
        ...

    @property
    def prices(self) -> Mapping[str, ModelPrice]:
        """Each model's price, by name (empty: unknown)."""
        ...

    async def models(self) -> list[str]:
        """The models served (empty: any)."""
        ...

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Stream the answer's events to ``emit``."""
        ...


@attrs.define
class _Remote:
    worker: OpenAIWorker
    label: str
    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict)

    async def models(self) -> list[str]:
        return await self.worker.list_models()

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await self.worker.generate(request, emit)


@attrs.define
class _Local:
    gateway: Gateway
    label: str
    prices: Mapping[str, ModelPrice]

    async def models(self) -> list[str]:
        return list(self.gateway.models)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        async with self.gateway.pipeline.stream(request) as events:
            async for event in events:
                await emit(event)


def _prices(catalogue: Catalogue, config: Config) -> dict[str, ModelPrice]:
    """Every priced model of the catalogue, with ``[observability.metrics.prices]`` over it."""
    prices = {
        name: ModelPrice(
            facts.input_price or 0.0, facts.output_price or 0.0, facts.cached_input_price
        )
        for name, facts in catalogue.models.items()
        if facts.priced
    }
    return {**prices, **config.observability.metrics.prices}


def api_root(url: str) -> str:
    """The OpenAI API root of the service at ``url`` (``…/v1``, added when missing)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@asynccontextmanager
async def open_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    """The backend the arguments name, for the block.

    Raises:
        ConfigError: the configuration file is invalid, or ``--api-key-env`` is not set.
    """
    if args.url is None:
        config = Config() if args.config is None else load_checked(args.config)
        async with open_gateway(config) as gateway:
            label = "the echo worker" if args.config is None else args.config
            yield _Local(gateway, label, _prices(gateway.catalogue, config))
        return
    keys: tuple[str, ...] = ()
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError(
                f"--api-key-env: the environment variable {args.api_key_env} is not set"
            )
        keys = (key,)
    provider = ProviderConfig(
        kind="openai", name="gateway", base_url=api_root(args.url), api_keys=keys
    )
    async with make_client(provider, "httpx") as client:
        worker = worker_for(provider, client)
        assert isinstance(worker, OpenAIWorker)
        yield _Remote(worker, provider.base_url or args.url)


@attrs.define
class Chat:
    """The REPL's state: the conversation, the answer being written, the terminal.

    Args:
        backend: where answers come from.
        conversation: the chat so far.
        max_tokens: the most tokens per answer, or ``None``.
        read: shows a prompt and returns the line typed (raises ``EOFError`` on Ctrl-D).
        write: writes text as it is (flushed).
    """

    backend: Backend
    conversation: Conversation
    max_tokens: int | None = None
    read: Callable[[str], str] = input
    write: Callable[[str], None] = attrs.field(factory=lambda: _write)
    _answering: trio.CancelScope | None = None
    _reading: bool = False

    async def run(self) -> None:
        """Read questions and commands until ``/quit`` or Ctrl-D."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_interrupts)
            while (line := await self._read_line()) is not None:
                line = line.strip()
                if line.startswith("/"):
                    if not await self.command(line):
                        break
                elif line:
                    await self.answer(line)
            nursery.cancel_scope.cancel()

    async def _read_line(self) -> str | None:
        self._reading = True
        try:
            return await trio.to_thread.run_sync(self.read, "you> ", abandon_on_cancel=True)
        except EOFError:
            self.write("\n")
            return None
        finally:
            self._reading = False

    async def _watch_interrupts(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as interrupts:
            async for _ in interrupts:
                if self._answering is not None:
                    self._answering.cancel()
                elif self._reading:
                    self.write("\n(Ctrl-D or /quit leaves)\nyou> ")

    async def answer(self, question: str) -> None:
        """Ask ``question``, stream the answer, then print its statistics line."""
        self.conversation.turns.append(Message("user", question))
        text: list[str] = []
        usage: Usage | None = None
        start = trio.current_time()
        first: float | None = None

        async def show(event: StreamEvent) -> None:
            nonlocal usage, first
            if isinstance(event, TextDelta) and event.text:
                if first is None:
                    first = trio.current_time() - start
                text.append(event.text)
                self.write(event.text)
            elif isinstance(event, ToolCallStart):
                self.write(f"[tool call {event.name}] ")
            elif isinstance(event, Usage):
                usage = event

        self.write(f"{self.conversation.model}> ")
        error: str | None = None
        with trio.CancelScope() as scope:
            self._answering = scope
            try:
                await self.backend.generate(self.conversation.request(self.max_tokens), show)
            except OrchestratorError as exc:
                error = " ".join(str(exc).split())
        self._answering = None
        latency = trio.current_time() - start
        self._settle("".join(text), error)
        if error is not None:
            self.write(f"error: {error}\n\n")
            return
        price = self.backend.prices.get(self.conversation.model)
        stats = AnswerStats(latency, first, usage, price)
        stopped = "[stopped] " if scope.cancelled_caught else ""
        self.write(f"\n{stopped}{stats.line()}\n\n")

    def _settle(self, text: str, error: str | None) -> None:
        """Keep the answer (a stopped one too) in the conversation; after an error, or a
        stop before any text, drop the question, so that it is not asked twice."""
        if error is None and text:
            self.conversation.turns.append(Message("assistant", text))
        else:
            self.conversation.turns.pop()

    async def command(self, line: str) -> bool:
        """Run a ``/command``; return ``False`` to leave."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.write(HELP + "\n")
        elif name == "/model":
            await self._model(rest)
        elif name == "/system":
            self.conversation.system = rest or None
            self.write(f"system prompt {'set' if rest else 'removed'}\n")
        elif name == "/reset":
            self.conversation.turns.clear()
            self.write("conversation forgotten (the system prompt stays)\n")
        elif name == "/save":
            self._save(rest)
        else:
            self.write(f"unknown command {name}; /help lists them\n")
        return True

    async def _model(self, name: str) -> None:
        if name:
            self.conversation.model = name
            self.write(f"model: {name}\n")
            return
        try:
            served = await self.backend.models()
        except OrchestratorError as exc:
            served = [f"(cannot list: {exc})"]
        listing = ", ".join(served) or "any"
        self.write(f"model: {self.conversation.model} (served: {listing})\n")

    def _save(self, path: str) -> None:
        if not path:
            self.write("/save needs a file name\n")
            return
        try:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(self.conversation.to_json(), indent=2) + "\n")
        except OSError as exc:
            self.write(f"cannot save: {exc}\n")
            return
        self.write(f"saved {len(self.conversation.turns)} messages to {path}\n")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(subparsers: Any) -> None:
    """Add the ``chat`` subcommand."""
    parser = subparsers.add_parser(
        "chat",
        help="talk to a gateway in the terminal, answers streamed",
        description="A chat REPL. Ctrl-C stops an answer; Ctrl-D or /quit leaves; /help.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running service (http://127.0.0.1:8000)")
    source.add_argument("--config", metavar="FILE", help="open this configuration's gateway here")
    parser.add_argument("--model", help="the model to ask (default: the first one served)")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="with --url: the variable holding the service's key"
    )
    parser.add_argument("--system", metavar="TEXT", help="a system prompt")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="the most tokens per answer")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Chat until ``/quit`` or Ctrl-D; return the exit status."""
    try:
        trio.run(_chat, args)
    except ConfigError as exc:
        print(f"trio-orchestrator chat: {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    except OrchestratorError as exc:
        print(f"trio-orchestrator chat: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


async def _chat(args: argparse.Namespace) -> None:
    async with open_backend(args) as backend:
        model = args.model or await _first_model(backend)
        chat = Chat(backend, Conversation(model, args.system), args.max_tokens)
        _write(f"Chatting with {model} at {backend.label}. /help for commands, Ctrl-D quits.\n")
        await chat.run()


async def _first_model(backend: Backend) -> str:
    served = await backend.models()
    return served[0] if served else "echo"
