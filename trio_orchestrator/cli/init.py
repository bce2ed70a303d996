"""``trio-orchestrator init``: write a first configuration, by questions or by flags.

Asked in a terminal (``trio-orchestrator init``), it walks through the providers (OpenAI,
Anthropic, a local OpenAI-compatible server, the offline echo), the environment variables
that hold their keys, the resilience layers and the output path. With any provider flag (or
``--non-interactive``) it asks nothing::

    trio-orchestrator init --openai --local http://127.0.0.1:11434/v1 --local-model llama3.2 \\
        --layers breaker,retry --output gateway.toml --test

It never writes a secret: a key is named by its environment variable (``api_key_env``). The
file it writes is commented, and :func:`render` checks it loads before it is written. With
``--test`` (or "yes" to the last question) it sends each provider one tiny request
(``max_tokens`` 1) and reports, one line per provider, whether it answered.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from ..config import parse_config
from ..config.toml_writer import toml_key, toml_value
from ..errors import (
    AuthenticationError,
    ConfigError,
    ModelNotFound,
    OrchestratorError,
    PermissionDenied,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from ..types import GenerationParams, Message, PromptRequest
from ..workers.config import DEFAULT_BASE_URLS, ProviderConfig
from ..workers.factory import make_client, worker_for

__all__ = ["Layers", "Plan", "ProviderChoice", "probe", "register", "render"]

Kind = Literal["openai", "anthropic", "echo"]
LAYER_NAMES = ("breaker", "retry", "cache", "rate-limits")
DEFAULT_OUTPUT = "trio-orchestrator.toml"
LOCAL_URL = "http://127.0.0.1:11434/v1"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a pasted key looks like, so that one is refused instead of being taken for a name.
_LOOKS_LIKE_KEY = re.compile(r"(sk-|sk_|key-)|[A-Za-z0-9_-]{40,}")


@attrs.frozen
class ProviderChoice:
    """One provider the user chose.

    Attributes:
        kind: ``openai`` (OpenAI or a local OpenAI-compatible server), ``anthropic`` or
            ``echo``.
        name: its name in the file (``openai``, ``anthropic``, ``local``, ``echo``).
        model: the model it serves.
        base_url: the API root, or ``None`` for the kind's default.
        api_key_env: the environment variable holding its key, or ``None`` (no key).
        comment: the line written above its table.
    """

    kind: Kind
    name: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    comment: str = ""

    def config(self) -> ProviderConfig:
        """The provider's configuration, as the written file will load it."""
        return ProviderConfig(
            kind=self.kind,
            name=self.name,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            models=(self.model,),
        )


@attrs.frozen
class Layers:
    """The resilience layers to switch on.

    Attributes:
        breaker: the circuit breaker.
        retry: retries with backoff.
        cache: the response cache (deterministic requests only).
        rate_limits: a rate limit per provider.
        requests_per_second: that limit.
    """

    breaker: bool = True
    retry: bool = True
    cache: bool = False
    rate_limits: bool = False
    requests_per_second: float = 10.0

    @classmethod
    def parse(cls, text: str, requests_per_second: float = 10.0) -> Layers:
        """Read ``--layers``: names from :data:`LAYER_NAMES`, comma-separated, or ``none``.

        Raises:
            ValueError: an unknown name.
        """
        names = {n.strip() for n in text.split(",") if n.strip()} - {"none"}
        unknown = sorted(names - set(LAYER_NAMES))
        if unknown:
            raise ValueError(f"unknown layer {unknown[0]!r}: choose from {', '.join(LAYER_NAMES)}")
        return cls(
            "breaker" in names,
            "retry" in names,
            "cache" in names,
            "rate-limits" in names,
            requests_per_second,
        )

    def names(self) -> list[str]:
        """The names of the layers switched on."""
        on = (self.breaker, self.retry, self.cache, self.rate_limits)
        return [name for name, enabled in zip(LAYER_NAMES, on, strict=True) if enabled]


@attrs.frozen
class Plan:
    """What to write.

    Attributes:
        providers: the providers, at least one.
        layers: the resilience layers.
    """

    providers: tuple[ProviderChoice, ...]
    layers: Layers = attrs.field(factory=Layers)


def openai(
    key_env: str = "OPENAI_API_KEY",
    model: str = "gpt-4o-mini",
    url: str = DEFAULT_BASE_URLS["openai"],
) -> ProviderChoice:
    """OpenAI's API (or another at ``url`` speaking it), its key in ``key_env``."""
    comment = f"OpenAI. Its key is read from ${key_env} when the service starts."
    return ProviderChoice("openai", "openai", model, url, key_env, comment)


def anthropic(
    key_env: str = "ANTHROPIC_API_KEY",
    model: str = "claude-3-5-haiku-latest",
    url: str = DEFAULT_BASE_URLS["anthropic"],
) -> ProviderChoice:
    """Anthropic's Messages API, its key in ``key_env``."""
    comment = f"Anthropic. Its key is read from ${key_env} when the service starts."
    return ProviderChoice("anthropic", "anthropic", model, url, key_env, comment)


def local(url: str, model: str = "llama3.2", key_env: str | None = None) -> ProviderChoice:
    """A local OpenAI-compatible server (Ollama, llama.cpp, vLLM, LM Studio) at ``url``."""
    comment = "A local OpenAI-compatible server (Ollama, llama.cpp server, vLLM, LM Studio…)."
    if key_env:
        comment += f" Its key is read from ${key_env}."
    return ProviderChoice("openai", "local", model, url, key_env, comment)


def echo() -> ProviderChoice:
    """The offline echo provider: answers with the prompt, no key, no network."""
    comment = "The offline echo provider: answers with your prompt; no key, no network."
    return ProviderChoice("echo", "echo", "echo", comment=comment)


def check_env_name(text: str) -> str:
    """``text`` if it is an environment variable's name.

    Raises:
        ValueError: it is not one, or looks like a key itself (which is never written).
    """
    if _LOOKS_LIKE_KEY.match(text):
        raise ValueError(
            "that looks like a key itself: give the NAME of the environment variable that "
            "holds it (such as OPENAI_API_KEY); no key is ever written to the file"
        )
    if not _ENV_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not an environment variable name (letters, digits, _)")
    return text


def check_url(text: str) -> str:
    """``text`` if it is an http(s) URL, without a trailing slash.

    Raises:
        ValueError: it is not.
    """
    if not text.startswith(("http://", "https://")) or len(text) < 10:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


# ---------------------------------------------------------------------------------------
# The file


def render(plan: Plan, path: str = DEFAULT_OUTPUT) -> str:
    """The commented TOML configuration ``plan`` describes.

    Args:
        plan: the providers and layers.
        path: the file's name, for the commands its header shows.

    Returns:
        The text; it loads (checked here: a failure is a bug of this module).
    """
    lines = _header(path) + _providers(plan.providers) + _resilience(plan.layers)
    lines += _service_and_metrics(plan.providers)
    text = "\n".join(lines) + "\n"
    parse_config(text)  # raises ConfigError if this module wrote something invalid
    return text


def _header(path: str) -> list[str]:
    return [
        "# trio_orchestrator configuration, written by `trio-orchestrator init`.",
        "#",
        f"#   trio-orchestrator config check {path}    # validate, print the effective config",
        f"#   trio-orchestrator serve --config {path}  # the OpenAI-compatible service",
        f"#   trio-orchestrator chat --config {path}   # talk to it in this terminal",
        "#",
        "# No key is written here: each provider names the environment variable holding its key",
        "# (api_key_env), read when the service starts. Every option: docs/configuration.md.",
        "",
    ]


def _rule(*text: str) -> list[str]:
    return ["# " + "-" * 77, *(f"# {line}" for line in text), ""]


def _pairs(table: str, items: dict[str, Any], notes: dict[str, str] | None = None) -> list[str]:
    lines = [table]
    for key, value in items.items():
        line = f"{toml_key(key)} = {toml_value(value)}"
        note = (notes or {}).get(key)
        lines.append(f"{line:<28}# {note}" if note else line)
    return [*lines, ""]


def _providers(providers: Sequence[ProviderChoice]) -> list[str]:
    lines = _rule(
        "Providers. A request goes to the providers whose `models` list the model it asks",
        "for (several are load balanced); a model no provider lists is a 404.",
    )
    lines += _pairs("[providers]", {"strategy": "round_robin"}, {"strategy": "or least_loaded"})
    for p in providers:
        items: dict[str, Any] = {"kind": p.kind, "name": p.name}
        if p.base_url:
            items["base_url"] = p.base_url
        if p.api_key_env:
            items["api_key_env"] = p.api_key_env
        items["models"] = [p.model]
        lines += [f"# {p.comment}", *_pairs("[[providers.providers]]", items)]
    return lines


def _resilience(layers: Layers) -> list[str]:
    lines = _rule(
        "Resilience layers around the providers, outermost first: cache → rate limit →",
        "circuit breaker → retry. Switch one on or off with `enabled`.",
    )
    lines += _pairs(
        "[resilience.breaker]",
        {"enabled": layers.breaker, "failure_threshold": 5, "cooldown": 5.0},
        {"failure_threshold": "consecutive failures that open it", "cooldown": "seconds"},
    )
    lines += _pairs(
        "[resilience.retry]",
        {"enabled": layers.retry, "max_attempts": 3, "initial_backoff": 0.5, "max_backoff": 30.0},
        {"max_attempts": "the first included; never past the deadline"},
    )
    lines += _pairs(
        "[resilience.cache]",
        {"enabled": layers.cache, "max_entries": 1024, "ttl": 300.0},
        {"enabled": "answers to identical requests with temperature 0", "ttl": "seconds"},
    )
    rps = layers.requests_per_second
    limit = {"scope": "provider", "requests_per_second": rps, "burst": 2 * rps, "mode": "wait"}
    lines += _pairs(
        "[resilience.rate_limits]",
        {"enabled": layers.rate_limits, "limits": [limit]},
        {"enabled": "mode wait: queue (within the deadline); reject: 429"},
    )
    return lines


def _service_and_metrics(providers: Sequence[ProviderChoice]) -> list[str]:
    lines = _rule("The HTTP service (`trio-orchestrator serve`) and its metrics (/metrics).")
    lines += _pairs("[service]", {"host": "127.0.0.1", "port": 8000})
    price = toml_value({"input_per_million": 0.0, "output_per_million": 0.0})
    lines += [
        "[observability.metrics]",
        "enabled = true",
        "",
        "# Prices (USD per million tokens) make /metrics count spend and `chat` show each",
        "# answer's cost. The bundled model catalogue prices the major models already",
        "# (docs/catalogue.md); for another model, fill in its prices and uncomment:",
        "# [observability.metrics.prices]",
        *(f"# {toml_key(model)} = {price}" for model in dict.fromkeys(p.model for p in providers)),
    ]
    return lines


# ---------------------------------------------------------------------------------------
# Testing the providers


async def probe(provider: ProviderConfig, patience: float = 10.0) -> tuple[bool, str]:
    """Send ``provider`` one tiny request (``max_tokens`` 1) and say what came back.

    Args:
        provider: the provider.
        patience: seconds to wait for its answer.

    Returns:
        Whether it answered, and one line saying what was found (``ok``, ``401 …``,
        ``unreachable …``).
    """
    model = provider.models[0] if provider.models else "echo"
    request = PromptRequest(
        messages=(Message("user", "Say OK."),), params=GenerationParams(model, max_tokens=1)
    )

    async def ignore(_event: object) -> None:
        pass

    start = trio.current_time()
    try:
        async with AsyncExitStack() as stack:
            client = None
            if provider.kind != "echo":
                client = await stack.enter_async_context(make_client(provider))
            with trio.fail_after(patience):
                await worker_for(provider, client).generate(request, ignore)
    except trio.TooSlowError:
        return False, f"no answer within {patience:g} s"
    except (ConfigError, OrchestratorError) as exc:
        return False, _finding(provider, exc)
    return True, f"ok ({model} answered in {trio.current_time() - start:.2f} s)"


def _finding(provider: ProviderConfig, exc: OrchestratorError) -> str:
    detail = " ".join(str(exc).split())
    env = f"${provider.api_key_env}" if provider.api_key_env else "its key"
    if isinstance(exc, ConfigError):
        return f"{provider.api_key_env} is not set: export it, then test again"
    if isinstance(exc, AuthenticationError):
        return f"401: the key was refused (check {env})"
    if isinstance(exc, PermissionDenied):
        return f"403: the key may not use {provider.models[0]} (check {env})"
    if isinstance(exc, ModelNotFound):
        return f"404: the server does not know the model {provider.models[0]}"
    if isinstance(exc, ProviderConnectionError):
        return f"unreachable: {provider.base_url}: {detail}"
    if isinstance(exc, ProviderTimeout):
        return f"no answer in time: {detail}"
    if isinstance(exc, ProviderError) and exc.status is not None:
        return f"{exc.status}: {detail}"
    return f"failed: {detail}"


async def probe_all(
    providers: Sequence[ProviderChoice],
    patience: float,
    out: Callable[[str], None],
) -> bool:
    """Probe every provider at once; write one line each; return whether all answered."""
    results: dict[str, tuple[bool, str]] = {}

    async def one(choice: ProviderChoice) -> None:
        results[choice.name] = await probe(choice.config(), patience)

    async with trio.open_nursery() as nursery:
        for choice in providers:
            nursery.start_soon(one, choice)
    out("Testing each provider with one tiny request (max_tokens 1):")
    for choice in providers:
        _ok, line = results[choice.name]
        out(f"  {choice.name:<10} {line}")
    return all(ok for ok, _ in results.values())


# ---------------------------------------------------------------------------------------
# The command


def register(subparsers: Any) -> None:
    """Add the ``init`` subcommand."""
    parser = subparsers.add_parser(
        "init",
        help="write a first configuration (asks in a terminal; flags for scripts)",
        description="Write a commented configuration file. With no provider flag it asks its "
        "questions in the terminal; with one (or --non-interactive) it asks nothing.",
    )
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, metavar="FILE")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("-y", "--non-interactive", action="store_true", help="ask nothing")
    parser.add_argument("--openai", action="store_true", help="use OpenAI")
    parser.add_argument("--openai-key-env", default="OPENAI_API_KEY", metavar="VAR")
    parser.add_argument("--openai-model", default="gpt-4o-mini", metavar="MODEL")
    # The official SDKs' own variables name another API root; init honours them the same way.
    parser.add_argument(
        "--openai-base-url",
        default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URLS["openai"],
        metavar="URL",
        help="another OpenAI-compatible API (OpenRouter, Azure, a proxy…); "
        "default $OPENAI_BASE_URL, else OpenAI's",
    )
    parser.add_argument("--anthropic", action="store_true", help="use Anthropic")
    parser.add_argument(
        "--anthropic-base-url",
        default=os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URLS["anthropic"],
        metavar="URL",
        help="default $ANTHROPIC_BASE_URL, else Anthropic's",
    )
    parser.add_argument("--anthropic-key-env", default="ANTHROPIC_API_KEY", metavar="VAR")
    parser.add_argument("--anthropic-model", default="claude-3-5-haiku-latest", metavar="MODEL")
    parser.add_argument(
        "--local", metavar="URL", help=f"a local OpenAI-compatible server (Ollama: {LOCAL_URL})"
    )
    parser.add_argument("--local-model", default="llama3.2", metavar="MODEL")
    parser.add_argument("--local-key-env", metavar="VAR", help="its key's variable, if any")
    parser.add_argument("--echo", action="store_true", help="the offline echo provider")
    parser.add_argument(
        "--layers",
        default="breaker,retry",
        help=f"resilience layers to switch on: {','.join(LAYER_NAMES)} or none "
        "(default: breaker,retry)",
    )
    parser.add_argument("--requests-per-second", type=float, default=10.0, metavar="N")
    parser.add_argument("--test", action="store_true", help="test each provider once written")
    parser.add_argument("--test-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Ask (or read the flags), write the file, optionally test the providers."""
    chosen = args.openai or args.anthropic or args.local or args.echo
    try:
        if chosen or args.non_interactive:
            plan, path, test = _from_flags(args), Path(args.output), args.test
            if path.exists() and not args.force:
                print(f"init: {path} exists; give --force to overwrite it", file=sys.stderr)
                return 1
        else:
            plan, path, test = Wizard(input, print).run(args)
    except ValueError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 2
    except EOFError:
        print("\ninit: cancelled; nothing written", file=sys.stderr)
        return 1
    return _write_and_test(plan, path, test, args.test_timeout)


def _from_flags(args: argparse.Namespace) -> Plan:
    providers: list[ProviderChoice] = []
    if args.openai:
        key_env = check_env_name(args.openai_key_env)
        url = check_url(args.openai_base_url)
        providers.append(openai(key_env, args.openai_model, url))
    if args.anthropic:
        key_env = check_env_name(args.anthropic_key_env)
        url = check_url(args.anthropic_base_url)
        providers.append(anthropic(key_env, args.anthropic_model, url))
    if args.local:
        local_key = check_env_name(args.local_key_env) if args.local_key_env else None
        providers.append(local(check_url(args.local), args.local_model, local_key))
    if args.echo or not providers:
        providers.append(echo())
    if args.requests_per_second <= 0:
        raise ValueError("--requests-per-second must be positive")
    return Plan(tuple(providers), Layers.parse(args.layers, args.requests_per_second))


def _write_and_test(plan: Plan, path: Path, test: bool, timeout: float) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(plan, str(path)), encoding="utf-8")
    names = ", ".join(p.name for p in plan.providers)
    layers = ", ".join(plan.layers.names()) or "no resilience layers"
    print(f"Wrote {path} ({names}; {layers}).")
    ok = trio.run(probe_all, plan.providers, timeout, print) if test else True
    _next_steps(plan, path)
    return 0 if ok else 1


def _next_steps(plan: Plan, path: Path) -> None:
    unset = [p.api_key_env for p in plan.providers if p.api_key_env]
    unset = [name for name in unset if not os.environ.get(name)]
    print("Next:")
    for name in unset:
        print(f"  export {name}=…   # not set in this shell; `config check` needs it")
    print(f"  trio-orchestrator config check {path}")
    print(f"  trio-orchestrator serve --config {path}")
    print(f"  trio-orchestrator chat --config {path}")


# ---------------------------------------------------------------------------------------
# The questions


@attrs.define
class Wizard:
    """The questions, asked through ``ask`` (``input``) and ``say`` (``print``).

    Args:
        ask: shows a prompt and returns the line typed (raises ``EOFError`` on Ctrl-D).
        say: writes a line.
    """

    ask: Callable[[str], str]
    say: Callable[[str], None]

    def run(self, args: argparse.Namespace) -> tuple[Plan, Path, bool]:
        """Ask everything; return the plan, the output path and whether to test."""
        self.say("trio-orchestrator init: a first configuration (Enter takes the [default]).")
        self.say("No key is written to the file: you name the variables that hold them.\n")
        providers = self._providers()
        self.say("\nResilience layers")
        layers = self._layers()
        self.say("")
        path = self._output(Path(args.output), args.force)
        test = self.yes("Test each provider now with one tiny request (max_tokens 1)?", True)
        return Plan(tuple(providers), layers), path, test

    def text(self, question: str, default: str = "", check: Callable[[str], str] = str) -> str:
        """Ask until the answer passes ``check`` (which raises ``ValueError`` to refuse)."""
        while True:
            answer = self.ask(f"{question} [{default}]: ").strip() or default
            try:
                return check(answer)
            except ValueError as exc:
                self.say(f"  {exc}")

    def yes(self, question: str, default: bool) -> bool:
        """Ask a yes/no question."""
        hint = "Y/n" if default else "y/N"
        while True:
            answer = self.ask(f"{question} [{hint}]: ").strip().lower()
            if not answer:
                return default
            if answer in ("y", "yes", "n", "no"):
                return answer.startswith("y")
            self.say("  answer y or n")

    def _providers(self) -> list[ProviderChoice]:
        self.say("Providers")
        providers = []
        if self.yes("  OpenAI?", False):
            key = self.text("    Environment variable holding the key", "OPENAI_API_KEY",
                            check_env_name)  # fmt: skip
            providers.append(openai(key, self.text("    Model", "gpt-4o-mini")))
        if self.yes("  Anthropic?", False):
            key = self.text("    Environment variable holding the key", "ANTHROPIC_API_KEY",
                            check_env_name)  # fmt: skip
            providers.append(anthropic(key, self.text("    Model", "claude-3-5-haiku-latest")))
        if self.yes("  A local OpenAI-compatible server (Ollama, llama.cpp, vLLM)?", False):
            self.say("    Ollama: http://127.0.0.1:11434/v1, llama.cpp: :8080/v1, vLLM: :8000/v1")
            url = self.text("    Its base URL", LOCAL_URL, check_url)
            model = self.text("    Model", "llama3.2")
            key = self.text("    Environment variable holding its key (none: -)", "-",
                            lambda t: t if t == "-" else check_env_name(t))  # fmt: skip
            providers.append(local(url, model, None if key == "-" else key))
        if self.yes("  The offline echo provider (no key, no network)?", not providers):
            providers.append(echo())
        if not providers:
            self.say("  No provider chosen: adding the offline echo provider.")
            providers.append(echo())
        return providers

    def _layers(self) -> Layers:
        breaker = self.yes("  Circuit breaker (stop calling a failing provider a while)?", True)
        retry = self.yes("  Retries with backoff (429, 5xx, timeouts)?", True)
        cache = self.yes("  Response cache (identical requests at temperature 0)?", False)
        limits = self.yes("  A rate limit per provider?", False)
        rps = 10.0
        if limits:
            rps = float(self.text("    Requests per second", "10", _positive_number))
        return Layers(breaker, retry, cache, limits, rps)

    def _output(self, default: Path, force: bool) -> Path:
        while True:
            path = Path(self.text("Write the configuration to", str(default)))
            if force or not path.exists() or self.yes(f"{path} exists. Overwrite it?", False):
                return path


def _positive_number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("give a positive number")
    return text
