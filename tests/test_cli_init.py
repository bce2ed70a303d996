"""``trio-orchestrator init``: the wizard in a pseudo-terminal, the flags form, the file it
writes (commented, no secret, accepted by ``config check``), the provider test, and the first
ten minutes end to end: ``init`` → ``config check`` → ``serve`` → ``chat`` → an answer."""

from __future__ import annotations

import socket
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from terminal import COMMAND, child_env, open_terminal, serve_process

from trio_orchestrator.cli import main
from trio_orchestrator.cli.init import Layers, Plan, anthropic, echo, local, openai, render
from trio_orchestrator.config import parse_config
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider

KEY = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz"  # a key that must never reach a file


@contextmanager
def closed_port() -> Iterator[str]:
    """A loopback URL where nothing listens (the port bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


async def _main(*argv: str) -> int:
    # main() runs trio.run itself (for --test): in a thread, beside this test's Trio loop.
    return await trio.to_thread.run_sync(main, list(argv))


async def test_the_wizard_asks_refuses_bad_answers_and_writes_a_loadable_file(
    tmp_path: Path,
) -> None:
    """Asked in a terminal: a pasted key, a bad URL and a bad number are refused and asked
    again; an existing file is not overwritten unless confirmed; the file loads, names the
    key's variable and holds no key."""
    (tmp_path / "trio-orchestrator.toml").write_text("# mine\n")
    async with open_terminal("init", cwd=tmp_path) as term:
        answers = [
            (r"OpenAI\? \[y/N\]: ", "y"),
            (r"holding the key \[OPENAI_API_KEY\]: ", KEY),
            (r"looks like a key itself.*\n.*holding the key \[OPENAI_API_KEY\]: ", "MY_OPENAI"),
            (r"Model \[gpt-4o-mini\]: ", ""),
            (r"Anthropic\? \[y/N\]: ", "n"),
            (r"vLLM\)\? \[y/N\]: ", "yes"),
            (r"Its base URL \[http://127.0.0.1:11434/v1\]: ", "localhost"),
            (r"not an http.*\n.*Its base URL .*: ", "http://127.0.0.1:8080/v1/"),
            (r"Model \[llama3.2\]: ", "qwen"),
            (r"its key \(none: -\) \[-\]: ", ""),
            (r"echo provider .*\? \[y/N\]: ", "n"),
            (r"Circuit breaker.*\[Y/n\]: ", ""),
            (r"Retries.*\[Y/n\]: ", "n"),
            (r"cache.*\[y/N\]: ", "y"),
            (r"rate limit.*\[y/N\]: ", "y"),
            (r"Requests per second \[10\]: ", "many"),
            (r"not a number.*\n.*Requests per second \[10\]: ", "5"),
            (r"Write the configuration to \[trio-orchestrator.toml\]: ", ""),
            (r"exists. Overwrite it\? \[y/N\]: ", ""),
            (r"Write the configuration to \[trio-orchestrator.toml\]: ", "conf/gateway.toml"),
            (r"tiny request \(max_tokens 1\)\? \[Y/n\]: ", "n"),
        ]
        for prompt, answer in answers:
            await term.expect(prompt)
            await term.line(answer)
        await term.expect(r"Wrote conf/gateway.toml \(openai, local; breaker, cache, rate-limits\)")
        await term.expect(r"export MY_OPENAI=")
        assert await term.finish() == 0
    assert (tmp_path / "trio-orchestrator.toml").read_text() == "# mine\n"
    text = (tmp_path / "conf" / "gateway.toml").read_text()
    assert KEY not in text
    config = parse_config(text)
    assert config.providers is not None
    openai_, local_ = config.providers.providers
    assert (openai_.api_key_env, openai_.models, openai_.api_keys) == (
        "MY_OPENAI",
        ("gpt-4o-mini",),
        (),
    )
    assert (local_.base_url, local_.models, local_.api_key_env) == (
        "http://127.0.0.1:8080/v1",
        ("qwen",),
        None,
    )
    r = config.resilience
    assert (r.breaker.enabled, r.retry.enabled, r.cache.enabled) == (True, False, True)
    assert r.rate_limits.enabled
    assert r.rate_limits.limits[0].requests_per_second == 5.0


async def test_the_wizard_tests_each_provider(tmp_path: Path) -> None:
    """Answering yes to the last question sends each provider one tiny request: a refused key
    is reported as 401 (one line), the echo provider as ok; the status says one failed."""
    async with open_fake_provider() as fake:
        fake.set_key("wrong-key", Behaviour(status=401))
        env = child_env(LOCAL_KEY="wrong-key")
        async with open_terminal("init", cwd=tmp_path, env=env) as term:
            for prompt, answer in [
                (r"OpenAI\? ", ""),
                (r"Anthropic\? ", ""),
                (r"vLLM\)\? ", "y"),
                (r"Its base URL .*: ", fake.openai_base_url),
                (r"Model .*: ", "fake-model"),
                (r"its key \(none: -\) \[-\]: ", "LOCAL_KEY"),
                (r"echo provider .*\? \[y/N\]: ", "y"),
                (r"Circuit breaker.*: ", ""),
                (r"Retries.*: ", ""),
                (r"cache.*: ", ""),
                (r"rate limit.*: ", ""),
                (r"Write the configuration to .*: ", ""),
                (r"tiny request .*: ", ""),
            ]:
                await term.expect(prompt)
                await term.line(answer)
            await term.expect(r"local +401: the key was refused \(check \$LOCAL_KEY\)")
            await term.expect(r"echo +ok")
            assert await term.finish() == 1
        assert fake.requests[-1].body["max_tokens"] == 1


async def test_flags_write_and_test_ok_401_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags form asks nothing; --test reports one line per provider: ok, 401 for a
    refused key, unreachable for a server that is not there."""
    monkeypatch.setenv("GOOD_KEY", "good-key")
    monkeypatch.setenv("BAD_KEY", "bad-key")
    out = tmp_path / "flags.toml"
    async with open_fake_provider() as fake:
        fake.set_key("bad-key", Behaviour(status=401))
        with closed_port() as nowhere:
            status = await _main(
                "init", "--openai", "--openai-base-url", fake.openai_base_url,
                "--openai-key-env", "GOOD_KEY", "--openai-model", "fake-model",
                "--anthropic", "--anthropic-base-url", nowhere,
                "--anthropic-key-env", "GOOD_KEY",
                "--local", fake.openai_base_url, "--local-key-env", "BAD_KEY",
                "--layers", "none", "--test", "--test-timeout", "10", "-o", str(out),
            )  # fmt: skip
    shown = capsys.readouterr().out
    assert status == 1
    assert "openai     ok (fake-model answered" in shown
    assert "anthropic  unreachable: " in shown
    assert "local      401: the key was refused (check $BAD_KEY)" in shown
    assert "good-key" not in out.read_text()
    assert "bad-key" not in out.read_text()
    assert main(["config", "check", str(out)]) == 0


async def test_flags_refuse_to_overwrite_without_force(tmp_path: Path) -> None:
    """An existing file is kept (status 1) unless --force is given; --force replaces it."""
    out = tmp_path / "existing.toml"
    out.write_text("# mine\n")
    assert await _main("init", "--echo", "-o", str(out)) == 1
    assert out.read_text() == "# mine\n"
    assert await _main("init", "--echo", "-o", str(out), "--force") == 0
    assert 'kind = "echo"' in out.read_text()


@pytest.mark.parametrize(
    "flags",
    [
        ("--openai", "--openai-key-env", KEY),
        ("--local", "localhost:11434"),
        ("--echo", "--layers", "breaker,turbo"),
    ],
)
async def test_flags_refuse_a_key_a_bad_url_or_layer(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """A pasted key for a variable name, a URL without scheme, an unknown layer: status 2,
    nothing written."""
    out = tmp_path / "refused.toml"
    assert await _main("init", *flags, "-o", str(out)) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    "layers", ["none", "breaker", "retry,cache", "breaker,retry,cache,rate-limits"]
)
def test_every_rendering_loads_as_chosen(layers: str) -> None:
    """Whatever providers and layers are chosen, the file loads with exactly those, and is
    commented."""
    chosen = Layers.parse(layers, requests_per_second=3.0)
    plan = Plan((openai(), anthropic(), local("http://127.0.0.1:11434/v1"), echo()), chosen)
    text = render(plan, "x.toml")
    config = parse_config(text)
    r = config.resilience
    on = [r.breaker.enabled, r.retry.enabled, r.cache.enabled, r.rate_limits.enabled]
    assert on == [n in chosen.names() for n in ("breaker", "retry", "cache", "rate-limits")]
    assert config.providers is not None
    assert [p.label for p in config.providers.providers] == ["openai", "anthropic", "local", "echo"]
    assert text.count("\n#") > 20
    tomllib.loads(text)


async def test_init_check_serve_chat_end_to_end(tmp_path: Path) -> None:
    """The first ten minutes: init (flags, the fake provider as the local server) → config
    check → serve on a free port → chat --url in a terminal → the provider's answer."""
    async with open_fake_provider(Behaviour(text="Greetings from the fake provider")) as fake:
        config = tmp_path / "gateway.toml"
        init = [*COMMAND, "init", "--local", fake.openai_base_url, "--local-model", "fake-model"]
        done = await trio.run_process(
            [*init, "-o", str(config)], env=child_env(), capture_stdout=True
        )
        assert b"Wrote" in done.stdout
        check = await trio.run_process(
            [*COMMAND, "config", "check", str(config)],
            env=child_env(),
            capture_stdout=True,
            stderr=subprocess.STDOUT,
        )
        assert b'name = "local"' in check.stdout
        async with (
            serve_process(config) as served,
            open_terminal("chat", "--url", served.url) as term,
        ):
            await term.expect("Chatting with fake-model at http")
            await term.line("hello, gateway")
            await term.expect("fake-model> Greetings from the fake provider")
            await term.expect(r"\[latency .* tokens \d+ in / \d+ out")
            await term.send("\x04")
            assert await term.finish() == 0
        assert fake.requests[-1].body["messages"][-1]["content"] == "hello, gateway"
