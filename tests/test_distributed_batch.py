"""`trio-orchestrator batch --queue`: several processes work through one batch file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from redis_fixture import RedisServer, redis_server

__all__ = ["redis_server"]


def write_input(path: Path, n: int) -> None:
    """``n`` simple-form requests, then one malformed line."""
    lines = [json.dumps({"id": f"r{k}", "prompt": f"q{k}"}) for k in range(n)]
    path.write_text("\n".join([*lines, "{not json"]) + "\n")


def records(path: Path) -> list[dict[str, object]]:
    """The JSON lines of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_two_processes_share_one_batch_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two CLI processes on one input: together their files hold every line exactly once."""
    source = tmp_path / "in.jsonl"
    write_input(source, 60)

    async def batch(name: str) -> None:
        command = [sys.executable, "-m", "trio_orchestrator", "batch", str(source)]
        command += ["--out", str(tmp_path / f"{name}.jsonl"), "--queue", redis_server.url]
        await trio.run_process([*command, "--no-progress"], capture_stderr=True)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch, "a")
            nursery.start_soon(batch, "b")
    answers = records(tmp_path / "a.jsonl") + records(tmp_path / "b.jsonl")
    dead = records(tmp_path / "a.jsonl.dead") + records(tmp_path / "b.jsonl.dead")
    assert sorted(str(r["id"]) for r in answers) == sorted(f"r{k}" for k in range(60))
    assert {str(r["id"]): r["text"] for r in answers}["r7"] == "q7"
    assert [r["outcome"] for r in dead] == ["bad_line"]


async def test_rerunning_a_finished_shared_batch_records_nothing_new(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The queue remembers what is done: a second run on the same input ends at once."""
    source = tmp_path / "in.jsonl"
    write_input(source, 5)
    command = [sys.executable, "-m", "trio_orchestrator", "batch", str(source), "--no-progress"]
    command += ["--queue", redis_server.url, "--out"]
    await trio.run_process([*command, str(tmp_path / "first.jsonl")], capture_stderr=True)
    again = await trio.run_process([*command, str(tmp_path / "second.jsonl")], capture_stderr=True)
    assert len(records(tmp_path / "first.jsonl")) == 5
    assert records(tmp_path / "second.jsonl") == []
    assert b"6 of 6 lines done; this process recorded 0" in again.stderr
