"""The README's "first ten minutes", run as written: each block marked
``<!-- readme-test: NAME -->`` is executed by a real shell or interpreter against real
processes, so the first ten minutes cannot silently break.

Two things differ from a user's machine, and only these: the ports the README names (8000,
8001) are replaced with free ones, and ``OPENAI_BASE_URL`` points the OpenAI provider at the
fake provider (``trio-orchestrator fake-provider``, in its own process), as the OpenAI SDK's
own variable would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
FAKE_TEXT = "hello from the stand-in provider"


def readme_blocks() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` for every marked block of README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.finditer(r"<!-- readme-test: (\w+) -->\n```(\w+)\n(.*?)```", text, re.DOTALL)
    return {m.group(1): (m.group(2), m.group(3)) for m in found}


BLOCKS = readme_blocks()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**extra: str) -> dict[str, str]:
    """This environment, with the venv's commands first on the PATH."""
    env = os.environ | extra
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def started(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[str]:
    """Run a server command until its "serving on URL" line; yield that line; stop it."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "serving on" not in line:
            process.kill()
            _, err = process.communicate(timeout=30)
            pytest.fail(f"{command} did not start: {line}{err}")
        yield line
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=60)


@pytest.fixture(scope="module")
def ports() -> dict[str, str]:
    """The README's ports, each replaced with a free one."""
    return {"8000": str(free_port()), "8001": str(free_port())}


def as_run(code: str, ports: dict[str, str]) -> str:
    for written, used in ports.items():
        code = code.replace(f"127.0.0.1:{written}", f"127.0.0.1:{used}")
        code = code.replace(f"--port {written}", f"--port {used}")
    return code


@pytest.fixture(scope="module")
def quick_start_service(
    ports: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The quick start's service: ``trio-orchestrator serve`` with no configuration."""
    cwd = tmp_path_factory.mktemp("quick-start")
    command = ["trio-orchestrator", "serve", "--port", ports["8000"]]
    with started(command, environment(), cwd):
        yield


def test_the_readme_marks_the_blocks_this_test_runs() -> None:
    """Every path of the first ten minutes is a marked block (a renamed or unmarked one
    would otherwise go untested)."""
    assert set(BLOCKS) == {"sdk", "provider", "chat", "watch"}


def test_point_your_openai_sdk_here(quick_start_service: None, ports: dict[str, str]) -> None:
    """The SDK block, run by Python, prints the echo worker's answer."""
    language, code = BLOCKS["sdk"]
    assert language == "python"
    done = subprocess.run(
        [sys.executable, "-c", as_run(code, ports)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello, gateway"


def test_watch_it(quick_start_service: None, ports: dict[str, str]) -> None:
    """The watch block, run by bash, shows the request counter and the live statistics."""
    test_point_your_openai_sdk_here(quick_start_service, ports)  # something to count
    language, code = BLOCKS["watch"]
    assert language == "sh"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", as_run(code, ports)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert done.returncode == 0, done.stderr
    assert re.search(
        r'trio_orchestrator_requests_total\{.*outcome="completed".*\} [1-9]', done.stdout
    )
    assert '"pipeline":{"submitted":' in done.stdout


def test_add_your_real_provider_then_chat(ports: dict[str, str], tmp_path: Path) -> None:
    """The provider block (init → config check → serve) with the fake provider standing in
    for OpenAI, then the chat block answering a question from that provider."""
    language, code = BLOCKS["provider"]
    assert language == "sh"
    lines = [line for line in as_run(code, ports).splitlines() if line.strip()]
    (serve,) = [line for line in lines if line.startswith("trio-orchestrator serve")]
    before = lines[: lines.index(serve)]
    fake = ["trio-orchestrator", "fake-provider", "--text", FAKE_TEXT]
    with started(fake, environment(), tmp_path) as line:
        fake_url = line.split("serving on ")[1].split()[0]
        # What the block exports holds for the rest of it (one terminal), serve included.
        exported = dict(re.findall(r"^export (\w+)=(\S+)$", "\n".join(before), re.MULTILINE))
        env = environment(OPENAI_BASE_URL=f"{fake_url}/v1", **exported)
        setup = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(before)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "ok" in setup.stdout  # init --test reached the provider
        assert "sk-your-key" not in (tmp_path / "gateway.toml").read_text()
        with started(serve.split(), env, tmp_path):
            chat_language, chat = BLOCKS["chat"]
            assert chat_language == "sh"
            talk = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", as_run(chat, ports)],
                input="Hello\n",
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=tmp_path,
            )
    assert talk.returncode == 0, talk.stderr
    assert FAKE_TEXT in talk.stdout
