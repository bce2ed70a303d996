"""``trio-orchestrator top`` in a pseudo-terminal against a live ``serve`` process: the
screen shows the service's own numbers while traffic flows, q and Ctrl-C quit with status 0
leaving the terminal as it was, an unreachable service is one retried line, and without rich
the command says how to install it."""

from __future__ import annotations

import re
import socket
import termios
from pathlib import Path

import httpx
from terminal import REPO, child_env, open_terminal, serve_process

# An echo deployment behind the router, priced, so every answered request is charged to the
# caller's key in the router's budget ledger.
CONFIG = """
[[providers.providers]]
kind = "echo"
name = "local"
models = ["echo"]

[[routing.deployments]]
name = "echo-paid"
model = "echo"
provider = "local"
input_price = 1000.0
output_price = 1000.0

[[service.api_keys]]
name = "team-a"
key = "sk-team-a"

[[service.api_keys]]
name = "ops"
key = "sk-ops"
admin = true
"""
REQUESTS = 5
# Tall enough for every section (rich crops a full-screen frame to the terminal's height).
SCREEN = child_env(LINES="60")
LEFT_ALTERNATE_SCREEN = b"\x1b[?1049l"
GAP = r"(?:\x1b\[[0-9;]*m|\s)+"  # blanks, and the escapes that end a colour


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _send_traffic(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        for n in range(REQUESTS):
            answer = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": "Bearer sk-team-a"},
                json={"model": "echo", "messages": [{"role": "user", "content": f"hi {n}"}]},
            )
            assert answer.status_code == 200, answer.text


async def _stats(url: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        answer = await client.get("/v1/stats", headers={"Authorization": "Bearer sk-ops"})
        assert answer.status_code == 200, answer.text
        stats: dict[str, object] = answer.json()
        return stats


async def test_the_screen_shows_the_services_numbers_and_q_quits(tmp_path: Path) -> None:
    """With traffic sent while it runs, the screen shows /v1/stats' completed count and the
    key that spent, with the dollars the router's ledger holds (``budgets`` in /v1/stats);
    q quits with status 0, leaving the alternate screen and the terminal as it was."""
    config = tmp_path / "top.toml"
    config.write_text(CONFIG)
    async with serve_process(config) as served:
        args = ("top", "--url", served.url, "--api-key-env", "OPS_KEY", "--interval", "0.2")
        async with open_terminal(*args, env={**SCREEN, "OPS_KEY": "sk-ops"}) as term:
            await term.expect("q quits")  # the first frame is drawn
            await _send_traffic(served.url)
            stats = await _stats(served.url)
            pipeline, budgets = stats["pipeline"], stats["budgets"]
            assert isinstance(pipeline, dict)
            assert isinstance(budgets, dict)
            assert pipeline["completed"] == REQUESTS
            ((key, spent),) = budgets["per_api_key"].items()
            assert spent > 0
            await term.expect(rf"completed {REQUESTS}\b")
            await term.expect(r"Top keys by spend \(budget ledger\)")
            await term.expect(rf"{re.escape(key)}\s+{re.escape(f'${spent:.4f}')}")
            await term.send("q")
            assert await term.finish() == 0
            modes = termios.tcgetattr(term.master.fileno())[3]
    assert modes & termios.ECHO
    assert modes & termios.ICANON
    assert LEFT_ALTERNATE_SCREEN in term.output
    assert "Traceback" not in term.text()


async def test_an_unreachable_service_is_a_retried_line_and_ctrl_c_quits() -> None:
    """Nothing listening: the screen says it cannot reach the URL and retries (the line
    comes again), never a traceback; Ctrl-C quits with status 0 and the terminal is back in
    its line-by-line, echoing mode."""
    url = f"http://127.0.0.1:{_free_port()}"
    async with open_terminal("top", "--url", url, "--interval", "0.2", env=SCREEN) as term:
        line = rf"✗ cannot reach {re.escape(url)}: connection refused{GAP}retrying every 0.2 s"
        await term.expect(line)
        await term.expect(line)
        await term.send("\x03")
        assert await term.finish() == 0
        modes = termios.tcgetattr(term.master.fileno())[3]
    assert modes & termios.ECHO
    assert modes & termios.ICANON
    assert LEFT_ALTERNATE_SCREEN in term.output
    assert "Traceback" not in term.text()


async def test_without_rich_it_says_how_to_install_it(tmp_path: Path) -> None:
    """With rich not importable, top prints how to install the tui extra and exits 1."""
    fake = tmp_path / "rich"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no rich here')\n")
    env = child_env(PYTHONPATH=f"{tmp_path}:{REPO}")
    async with open_terminal("top", "--url", "http://127.0.0.1:9", env=env) as term:
        await term.expect(re.escape("pip install 'trio-orchestrator[tui]'"))
        assert await term.finish() == 1


async def test_an_unset_key_variable_is_said_and_exits_2() -> None:
    """``--api-key-env`` naming a variable that is not set is an error said at once (exit 2),
    not a dashboard of 401s."""
    url = f"http://127.0.0.1:{_free_port()}"
    async with open_terminal("top", "--url", url, "--api-key-env", "NO_SUCH_KEY", env=SCREEN) as t:
        await t.expect("the environment variable NO_SUCH_KEY is not set")
        assert await t.finish() == 2
