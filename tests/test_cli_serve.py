"""``trio-orchestrator serve`` as a process: it listens, serves, and drains on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from service_helpers import wait_for_statistic

PROMPTLY = 20  # seconds: a hang guard for process start and shutdown, never asserted on
LISTENING = re.compile(rb"(?:serving on|Running on) (http://[0-9.]+:[0-9]+)")


@attrs.define
class Served:
    url: str
    process: trio.Process
    output: bytearray


async def _read_until_listening(process: trio.Process, output: bytearray) -> str:
    assert process.stdout is not None
    while (match := LISTENING.search(output)) is None:
        chunk = await process.stdout.receive_some()
        assert chunk, f"serve exited before listening: {output.decode()}"
        output.extend(chunk)
    return match.group(1).decode()


async def _drain(stream: trio.abc.ReceiveStream | None, output: bytearray) -> None:
    assert stream is not None
    while chunk := await stream.receive_some():
        output.extend(chunk)


@asynccontextmanager
async def serve_process(config: Path, *options: str) -> AsyncIterator[Served]:
    """Run ``python -m trio_orchestrator serve --config FILE --port 0`` for the block."""
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(config)]
    async with open_server([*command, "--port", "0", *options]) as served:
        yield served


@asynccontextmanager
async def open_server(command: list[str]) -> AsyncIterator[Served]:
    """Run a server process for the block; its output is collected as it runs. It leads a
    process group of its own, killed whole afterwards: a test that fails while ``--workers``
    children run must not leave them behind."""
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    output = bytearray()
    try:
        with trio.fail_after(PROMPTLY):
            url = await _read_until_listening(process, output)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stdout, output)
            yield Served(url, process, output)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group ended with its leader
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def write_config(tmp_path: Path, token_delay: float, grace: float) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(
        f"[pipeline]\ngrace_period = {grace}\n\n[service.echo]\ntoken_delay = {token_delay}\n"
    )
    return path


async def _run_under_load(served: Served, n: int, words: int) -> list[httpx.Response | Exception]:
    results: list[httpx.Response | Exception] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        try:
            body = {"input": " ".join([f"w{i}"] * words)}
            results.append(await client.post("/v1/prompt", json=body))
        except httpx.HTTPError as exc:
            results.append(exc)

    client = httpx.AsyncClient(base_url=served.url, timeout=PROMPTLY)
    async with client, trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, client, i)
        async with httpx.AsyncClient(base_url=served.url) as monitor:
            with trio.fail_after(PROMPTLY):
                await wait_for_statistic(monitor, "inference_active", n)
        served.process.send_signal(signal.SIGTERM)
    with trio.fail_after(PROMPTLY):
        await served.process.wait()
    return results


async def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    """On SIGTERM every request in flight completes, and the process exits 0."""
    config = write_config(tmp_path, token_delay=0.02, grace=30)
    async with serve_process(config) as served:
        results = await _run_under_load(served, n=8, words=40)
    assert [getattr(r, "status_code", r) for r in results] == [200] * 8
    assert all(r.json()["outcome"] == "completed" for r in results if isinstance(r, httpx.Response))
    assert served.process.returncode == 0
    assert b"submitted=8 completed=8 failed=0 shed=0 expired=0 cancelled=0 in_flight=0" in (
        served.output
    )


async def test_requests_outlasting_the_grace_period_are_recorded_cancelled(tmp_path: Path) -> None:
    """Requests still running when the grace period ends are cancelled and counted so."""
    config = write_config(tmp_path, token_delay=0.05, grace=0.2)
    async with serve_process(config) as served:
        results = await _run_under_load(served, n=4, words=2000)
    assert served.process.returncode == 0
    assert not any(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
    assert b"submitted=4 completed=0 failed=0 shed=0 expired=0 cancelled=4 in_flight=0" in (
        served.output
    )


async def test_invalid_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A configuration with an unknown key stops serve with status 2 and names the key."""
    path = tmp_path / "bad.toml"
    path.write_text("[service]\nprot = 80\n")
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(path)]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert b"prot" in result.stderr


UNSET_KEY = (
    '[[providers.providers]]\nkind = "openai"\nname = "oa"\n'
    'api_key_env = "TRIO_ORCHESTRATOR_TEST_UNSET_KEY"\n'
)


async def test_an_unset_key_variable_stops_serve_before_it_listens(tmp_path: Path) -> None:
    """An api_key_env naming an unset variable: one line naming the key path, status 2,
    nothing served and no traceback."""
    path = tmp_path / "unset.toml"
    path.write_text(UNSET_KEY)
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(path)]
    command += ["--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "TRIO_ORCHESTRATOR_TEST_UNSET_KEY"}
    with trio.fail_after(PROMPTLY):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    assert result.returncode == 2
    assert b"serving on" not in result.stdout + result.stderr
    assert b"Traceback" not in result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert "providers.providers[0].api_key_env" in line
    assert "TRIO_ORCHESTRATOR_TEST_UNSET_KEY" in line


async def test_worker_processes_serve_and_drain_on_sigterm(tmp_path: Path) -> None:
    """With --workers 2, both processes serve; SIGTERM drains them and the parent exits 0."""
    config = write_config(tmp_path, token_delay=0, grace=5)
    async with serve_process(config, "--workers", "2") as served:
        # Both worker processes have opened their pipelines before the signal (one still
        # starting up when SIGTERM arrives is another test's business).
        with trio.fail_after(PROMPTLY):
            while served.output.count(b"pipeline opened:") < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with httpx.AsyncClient(base_url=served.url) as client:
            response = await client.post("/v1/prompt", json={"input": "hi"})
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROMPTLY):
            await served.process.wait()
    assert response.json()["outcome"] == "completed"
    assert served.process.returncode == 0
    assert served.output.count(b"pipeline closed:") == 2  # each process drained its own


async def test_hypercorn_serves_the_module_app(tmp_path: Path) -> None:
    """`hypercorn --worker-class trio trio_orchestrator.service.app:app` serves the service."""
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio"]
    command += ["--bind", "127.0.0.1:0", "trio_orchestrator.service.app:app"]
    async with open_server(command) as served:
        async with httpx.AsyncClient(base_url=served.url) as client:
            models = (await client.get("/v1/models")).json()
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROMPTLY):
            await served.process.wait()
    assert [m["id"] for m in models["data"]] == ["echo"]


async def _wait_for_output(served: Served, text: bytes) -> None:
    with trio.fail_after(PROMPTLY):
        while text not in served.output:  # noqa: ASYNC110 - the output grows as it comes
            await trio.sleep(0.05)


async def test_observability_logging_is_applied_under_serve(tmp_path: Path) -> None:
    """`[observability.logging] json = true, level = "DEBUG"`: serve's log lines are JSON
    objects, DEBUG ones among them."""
    path = tmp_path / "service.toml"
    path.write_text('[observability.logging]\njson = true\nlevel = "DEBUG"\n')
    async with serve_process(path) as served:
        await _wait_for_output(served, b"pipeline opened")
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROMPTLY):
            await served.process.wait()
    lines = [json.loads(line) for line in served.output.splitlines() if line.startswith(b"{")]
    assert {"DEBUG", "INFO"} <= {line["level"] for line in lines}
    assert any(line["message"].startswith("pipeline opened") for line in lines)


async def test_a_reload_after_port_on_the_command_line_refuses_nothing(tmp_path: Path) -> None:
    """SIGHUP with the file unchanged after `serve --port 0`: the reload reports no refused
    service.port (the command line's port is not a change the file asked for)."""
    config = write_config(tmp_path, token_delay=0, grace=5)
    async with serve_process(config) as served:
        await _wait_for_output(served, b"pipeline opened")
        served.process.send_signal(signal.SIGHUP)
        await _wait_for_output(served, b"reload of")
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROMPTLY):
            await served.process.wait()
    assert b"refused" not in served.output
    assert b"service.port" not in served.output


async def test_worker_processes_end_streams_cleanly_past_the_grace_period(tmp_path: Path) -> None:
    """With --workers 2, a stream still running when the grace period ends gets an error
    event then [DONE], and its response ends properly."""
    config = write_config(tmp_path, token_delay=0.05, grace=1)
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "w " * 2000}]}
    async with serve_process(config, "--workers", "2") as served:
        await _wait_for_output(served, b"pipeline opened")
        client = httpx.AsyncClient(base_url=served.url, timeout=PROMPTLY)
        received = b""
        async with client, client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for chunk in response.aiter_bytes():
                if not received:  # the stream is running: drain now
                    served.process.send_signal(signal.SIGTERM)
                received += chunk
        with trio.fail_after(PROMPTLY):
            await served.process.wait()
    events = [e for e in received.decode().split("\n\n") if e]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "cancelled"
    assert events[-1] == "data: [DONE]"
    assert served.process.returncode == 0


def _frozen_objects(metrics: str) -> float:
    match = re.search(r"^trio_orchestrator_gc_frozen_objects (\S+)$", metrics, re.MULTILINE)
    assert match is not None, "no trio_orchestrator_gc_frozen_objects in /metrics"
    return float(match.group(1))


@pytest.mark.parametrize("options", [(), ("--workers", "2")], ids=["one-process", "workers"])
async def test_serve_freezes_its_heap_once_listening(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    """``serve`` (each worker process too) freezes the heap it has once it listens, so full
    collections under load do not scan it; ``freeze_heap = false`` leaves it unfrozen."""
    config = write_config(tmp_path, token_delay=0, grace=5)
    async with serve_process(config, *options) as served:
        async with httpx.AsyncClient(base_url=served.url) as client:
            frozen = _frozen_objects((await client.get("/metrics")).text)
        served.process.send_signal(signal.SIGTERM)
    assert frozen > 10_000  # the modules, the configuration, the gateway's parts
    unfrozen = tmp_path / "unfrozen.toml"
    unfrozen.write_text(config.read_text() + "\n[service]\nfreeze_heap = false\n")
    async with serve_process(unfrozen, *options) as served:
        async with httpx.AsyncClient(base_url=served.url) as client:
            assert _frozen_objects((await client.get("/metrics")).text) == 0
        served.process.send_signal(signal.SIGTERM)
