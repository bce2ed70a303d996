"""Batch jobs: formats, dead letters, limits, resuming, interrupts and the command line."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_orchestrator import EchoWorker
from trio_orchestrator.batch import BadLine, BatchItem, parse_line, run_batch
from trio_orchestrator.cli import main
from trio_orchestrator.cli._progress import RichProgress
from trio_orchestrator.config import Config, PipelineConfig
from trio_orchestrator.errors import RateLimited
from trio_orchestrator.resilience import PriorityConfig
from trio_orchestrator.testing import Fail, Hang, ScriptedWorker, Succeed
from trio_orchestrator.workers import ModelWorker


def _simple(i: int, prompt: str = "hello batch world") -> str:
    return json.dumps({"id": f"r{i}", "prompt": prompt})


def _openai(i: int, content: str = "hi there") -> str:
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": content}]}
    line = {"custom_id": f"o{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _key(record: dict[str, Any]) -> str:
    return str(record.get("custom_id", record.get("id")))


async def _run(tmp_path: Path, lines: list[str], worker: ModelWorker, **kwargs: Any) -> Any:
    source = tmp_path / "in.jsonl"
    if not source.exists():
        _write(source, lines)
    return await run_batch(source, tmp_path / "out.jsonl", worker=worker, **kwargs)


async def test_results_mirror_input_format(tmp_path: Path) -> None:
    """Simple lines give {id, text…}; OpenAI lines give the OpenAI batch output format."""
    summary = await _run(tmp_path, [_simple(1), _openai(2)], EchoWorker())
    by_key = {_key(r): r for r in _records(tmp_path / "out.jsonl")}
    assert by_key["r1"]["text"] == "hello batch world"
    openai = by_key["o2"]
    assert openai["error"] is None
    assert openai["response"]["status_code"] == 200
    body = openai["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi there"}
    assert body["usage"]["total_tokens"] == 4
    assert summary.completed == 2


def test_parse_line_reads_openai_parameters() -> None:
    """An OpenAI line's body becomes the request's messages and parameters."""
    body = {
        "model": "m",
        "max_completion_tokens": 7,
        "stop": "END",
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": "hi"},
        ],
    }
    item = parse_line(3, json.dumps({"custom_id": "x", "body": body}))
    assert isinstance(item, BatchItem)
    assert item.line == 3
    assert [m.content for m in item.request.messages] == ["be brief", "hi"]
    assert item.request.params.max_tokens == 7
    assert item.request.params.stop == ("END",)
    assert item.request.request_id == "x"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{nope", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"prompt": "no id"}', '"custom_id"'),
        ('{"custom_id": "a", "url": "/v1/embeddings", "body": {}}', "not supported"),
        ('{"custom_id": "a", "body": {"messages": []}}', "non-empty list"),
        ('{"custom_id": "a", "body": {"messages": [{"role": "robot"}]}}', "role"),
    ],
)
def test_parse_line_explains_bad_lines(text: str, reason: str) -> None:
    """A bad line is reported with its number and what is wrong with it."""
    bad = parse_line(9, text)
    assert isinstance(bad, BadLine)
    assert bad.line == 9
    assert reason in bad.reason


async def test_bad_lines_are_dead_lettered_and_do_not_stop_the_job(tmp_path: Path) -> None:
    """Bad lines go to the dead-letter file with their line numbers; the rest still runs."""
    warnings: list[str] = []
    lines = [_simple(1), "garbage", _simple(2), '{"id": "r1", "prompt": "again"}']
    summary = await _run(tmp_path, lines, EchoWorker(), warn=warnings.append)
    dead = _records(tmp_path / "out.jsonl.dead")
    assert [(d["line"], d["outcome"]) for d in dead] == [(2, "bad_line"), (4, "bad_line")]
    assert "duplicate id 'r1'" in dead[1]["error"]["message"]
    assert sorted(_key(r) for r in _records(tmp_path / "out.jsonl")) == ["r1", "r2"]
    assert warnings[0].startswith("line 2: not valid JSON")
    assert summary.bad_lines == 2


async def test_failures_are_dead_lettered_with_reasons(tmp_path: Path) -> None:
    """A failed request goes to the dead letters with its error class and message."""
    worker = ScriptedWorker([Fail(RateLimited, retry_after=3.0)], then=Succeed(2))
    dead_path = tmp_path / "failures.jsonl"
    await _run(tmp_path, [_openai(1)], worker, dead_path=dead_path)
    (letter,) = _records(dead_path)
    assert letter["custom_id"] == "o1"
    assert letter["outcome"] == "failed"
    assert letter["error"]["code"] == "RateLimited"
    assert letter["response"] is None
    assert not (tmp_path / "out.jsonl").read_text()


async def test_expired_requests_are_dead_lettered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A request past the configured request_timeout is dead-lettered as expired."""
    config = Config(PipelineConfig(request_timeout=5.0))
    summary = await _run(tmp_path, [_simple(1)], ScriptedWorker.always(Hang()), config=config)
    (letter,) = _records(tmp_path / "out.jsonl.dead")
    assert letter["outcome"] == "expired"
    assert letter["error"]["code"] == "DeadlineExceeded"
    assert summary.expired == 1


async def test_shed_requests_are_dead_lettered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With the pipeline's inference channel full, the batch's excess is shed to dead letters."""
    config = Config(
        PipelineConfig(
            inference_capacity=1,
            inference_concurrency=1,
            priority=PriorityConfig(max_waiting=1),
        )
    )
    worker = ScriptedWorker.always(Succeed(2, first_token_delay=1.0))
    lines = [_simple(i) for i in range(10)]
    summary = await _run(tmp_path, lines, worker, config=config, concurrency=10)
    dead = _records(tmp_path / "out.jsonl.dead")
    assert summary.shed > 0
    assert {d["outcome"] for d in dead} == {"shed"}
    assert "inference stage's input channel is full" in dead[0]["error"]["message"]
    assert summary.completed + summary.shed == 10


async def test_rerun_skips_ids_already_done(tmp_path: Path) -> None:
    """A second run with the same output skips every id the first one finished."""
    lines = [_simple(i) for i in range(5)] + ["bad"]
    await _run(tmp_path, lines, EchoWorker())
    worker = ScriptedWorker()
    warnings: list[str] = []
    summary = await _run(tmp_path, lines, worker, warn=warnings.append)
    assert worker.statistics().calls == 0
    assert summary.skipped == 6
    assert warnings == []  # the bad line was reported by the run that recorded it
    assert len(_records(tmp_path / "out.jsonl")) == 5
    assert len(_records(tmp_path / "out.jsonl.dead")) == 1


async def test_stop_then_resume_accounts_for_every_id_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Stopped mid-run with work in flight past the grace period, then resumed: every id ends
    up exactly once across the output and the dead letters, all completed."""
    lines = [_simple(i) for i in range(20)]
    stop = trio.Event()

    class StopAfterThree:
        def __init__(self) -> None:
            self.seen = 0

        def start(self, total: int) -> None:
            pass

        def advance(self, outcome: str) -> None:
            self.seen += 1
            if self.seen == 3:
                stop.set()

        def stop(self) -> None:
            pass

    slow = ScriptedWorker([Succeed(1)] * 3, then=Succeed(1, first_token_delay=100.0))
    first = await _run(
        tmp_path, lines, slow, concurrency=5, stop=stop, grace_period=1.0, progress=StopAfterThree()
    )
    assert first.interrupted > 0
    assert first.was_interrupted
    assert {d["outcome"] for d in _records(tmp_path / "out.jsonl.dead")} == {"interrupted"}
    second = await _run(tmp_path, lines, EchoWorker())
    keys = [_key(r) for r in _records(tmp_path / "out.jsonl")]
    keys += [_key(r) for r in _records(tmp_path / "out.jsonl.dead")]
    assert Counter(keys) == Counter(f"r{i}" for i in range(20))
    assert not _records(tmp_path / "out.jsonl.dead")
    assert second.completed == 20 - first.completed


async def test_resume_drops_a_torn_last_line(tmp_path: Path) -> None:
    """A half-written last line (a crash mid-write) is dropped and its request run again."""
    lines = [_simple(1), _simple(2)]
    await _run(tmp_path, lines, EchoWorker())
    out = tmp_path / "out.jsonl"
    text = out.read_text().splitlines()
    out.write_text(text[0] + "\n" + text[1][:10])
    summary = await _run(tmp_path, lines, EchoWorker())
    assert summary.completed == 1
    assert sorted(_key(r) for r in _records(out)) == ["r1", "r2"]


def test_progress_bar_is_quiet_without_a_terminal() -> None:
    """Without a TTY the progress bar writes no escape codes and does not fail."""
    from rich.console import Console

    stream = io.StringIO()
    progress = RichProgress(Console(file=stream, force_terminal=False))
    progress.start(3)
    for outcome in ("completed", "failed", "completed"):
        progress.advance(outcome)
    progress.stop()
    assert "\x1b" not in stream.getvalue()


def test_progress_bar_shows_counts_on_a_terminal() -> None:
    """On a terminal the bar shows done/total and the outcome counts."""
    from rich.console import Console

    stream = io.StringIO()
    progress = RichProgress(Console(file=stream, force_terminal=True, width=160))
    progress.start(3)
    for outcome in ("completed", "failed", "completed"):
        progress.advance(outcome)
    progress.stop()
    output = stream.getvalue()
    assert "3/3" in output
    assert "completed 2 failed 1" in output


def test_cli_runs_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`trio-orchestrator batch IN --out OUT` writes results and reports bad lines on stderr."""
    source = _write(tmp_path / "in.jsonl", [_simple(1), "oops"])
    out = tmp_path / "out.jsonl"
    status = main(["batch", str(source), "--out", str(out), "--no-progress"])
    assert status == 0
    assert [_key(r) for r in _records(out)] == ["r1"]
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err
    assert "1 completed" in err


def test_cli_creates_the_output_directory(tmp_path: Path) -> None:
    """`--out` in a directory that does not exist yet: it is created, no traceback."""
    source = _write(tmp_path / "in.jsonl", [_simple(1)])
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    assert main(["batch", str(source), "--out", str(out), "--no-progress"]) == 0
    assert [_key(r) for r in _records(out)] == ["r1"]


def test_cli_rejects_unknown_config_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file with an unknown key fails with the key named, before any work."""
    source = _write(tmp_path / "in.jsonl", [_simple(1)])
    config = tmp_path / "c.toml"
    config.write_text("[pipeline]\ninference_concurency = 3\n")
    status = main(["batch", str(source), "--out", str(tmp_path / "o"), "--config", str(config)])
    assert status == 2
    assert "inference_concurency" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sigint_mid_run_leaves_consistent_files(tmp_path: Path) -> None:
    """Ctrl-C mid-run exits 130 with whole lines only; a resume then accounts for every id
    exactly once across output and dead letters."""
    lines = [_simple(i, "one two three four five six") for i in range(300)]
    source = _write(tmp_path / "in.jsonl", [*lines[:150], "not json", *lines[150:]])
    out, dead = tmp_path / "out.jsonl", tmp_path / "out.jsonl.dead"
    slow = tmp_path / "slow.toml"  # a slow echo worker, so Ctrl-C lands mid-run
    slow.write_text("[service.echo]\ntoken_delay = 0.05\n")
    command = [sys.executable, "-m", "trio_orchestrator", "batch", str(source)]
    command += ["--out", str(out), "--config", str(slow)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(out.read_bytes().splitlines()) < 10 if out.exists() else True:
        assert time.monotonic() < deadline, "the batch produced no results"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "rerun the same command to resume" in err
    first = _records(out)  # every line parses
    assert 10 <= len(first) < 300
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    keys = [_key(r) for r in _records(out)] + [_key(r) for r in _records(dead)]
    assert Counter(keys) == Counter([f"r{i}" for i in range(300)] + ["line:151"])


def test_batch_job_example_runs(tmp_path: Path) -> None:
    """examples/batch_job.py runs the example input: four results and one bad line."""
    example = Path(__file__).parent.parent / "examples" / "batch_job.py"
    out_dir = tmp_path / "not-yet-there"
    result = subprocess.run(
        [sys.executable, str(example), str(out_dir)], capture_output=True, text=True, check=True
    )
    assert "completed=4" in result.stdout
    assert "bad_lines=1" in result.stdout
    assert "bad input: line 4" in result.stderr
    assert sorted(_key(r) for r in _records(out_dir / "results.jsonl")) == [
        "greeting",
        "openai-1",
        "openai-2",
        "short",
    ]
