"""The fake provider as a tool: ``trio-orchestrator fake-provider`` and
``python -m trio_orchestrator.testing.fake_provider``, usable without pytest or Hypothesis."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anthropic
import openai
import pytest

from trio_orchestrator.testing import FaultMix
from trio_orchestrator.testing.fake_provider import Behaviour

PYTHON = sys.executable


def test_a_fault_spec_gives_each_kind_its_share() -> None:
    """``500=0.05,429=0.05,reset=0.02,stall=0.01``: 13 % of requests fail, each kind as often
    as its share says (over many seeded draws)."""
    mix = FaultMix.parse("500=0.05,429=0.05,reset=0.02,stall=0.01", seed=7)
    assert mix.rate == pytest.approx(0.13)
    assert mix.kinds == ("500", "429", "reset", "stall")
    rng = random.Random(7)
    drawn = [mix.fault(Behaviour(), rng) for _ in range(20_000)]
    kinds = [fault[0] for fault in drawn if fault is not None]
    assert len(kinds) / 20_000 == pytest.approx(0.13, abs=0.01)
    assert kinds.count("500") / 20_000 == pytest.approx(0.05, abs=0.006)
    assert kinds.count("stall") / 20_000 == pytest.approx(0.01, abs=0.004)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("500", "KIND=SHARE"),
        ("500=lots", "KIND=SHARE"),
        ("500=1.5", "KIND=SHARE"),
        ("500=0.6,429=0.6", "sum to 1.2"),
        ("500=0.1,500=0.1", "named twice"),
        ("teapot=0.1", "fault kinds must be among"),
    ],
)
def test_a_bad_fault_spec_says_what_is_wrong(spec: str, problem: str) -> None:
    """Each kind of mistake in a spec is refused with a message naming it."""
    with pytest.raises(ValueError, match=problem):
        FaultMix.parse(spec)


def test_the_module_imports_without_pytest_or_hypothesis() -> None:
    """The fake provider (and the package's names for it) import with pytest and Hypothesis
    absent: a user's install of the tool needs neither."""
    code = (
        "import sys; sys.modules['pytest'] = sys.modules['hypothesis'] = None\n"
        "from trio_orchestrator.testing import FaultMix, open_fake_provider\n"
        "import trio_orchestrator.cli\n"
        "print('imported')"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "imported", done.stderr


def test_python_dash_m_prints_its_help_and_no_warning() -> None:
    """``python -m trio_orchestrator.testing.fake_provider --help`` prints the flags, not a
    RuntimeWarning about the module being imported twice."""
    module = "trio_orchestrator.testing.fake_provider"
    done = subprocess.run(
        [PYTHON, "-W", "error", "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--faults KIND=SHARE" in done.stdout
    assert "Warning" not in done.stderr


@contextmanager
def fake_provider_process(*flags: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``trio-orchestrator fake-provider FLAGS`` in a process; yields its URL and the process."""
    command = [PYTHON, "-m", "trio_orchestrator", "fake-provider", *flags]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "serving on http://127.0.0.1:" in first, process.stderr and process.stderr.read()
        yield first.split("serving on ")[1].split()[0], process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_the_command_serves_both_wire_formats_until_ctrl_c() -> None:
    """The answer given on the command line reaches the official OpenAI and Anthropic SDKs;
    Ctrl+C (SIGINT) stops it cleanly with a count of what it served."""
    with fake_provider_process("--text", "hello from the fake") as (url, process):
        chat = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        answer = chat.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "hello from the fake"
        claude = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        message = claude.messages.create(
            model="fake-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "hello from the fake"
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "2 requests" in out


def test_the_command_injects_the_faults_it_is_given() -> None:
    """``--faults 500=1``: every request is answered 500, which the SDK raises as such."""
    with fake_provider_process("--faults", "500=1", "--seed", "3") as (url, _process):
        chat = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            chat.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}]
            )


def test_a_bad_flag_is_one_line_and_status_2() -> None:
    """A fault spec or tool call it cannot use, or a port already taken, is one line on
    stderr and exit status 2 (not a traceback)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flags in (["--faults", "500=2"], ["--tool-call", "lookup=not json"], ["--port", port]):
            done = subprocess.run(
                [PYTHON, "-m", "trio_orchestrator", "fake-provider", *flags],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
