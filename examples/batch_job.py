"""A batch job from Python: run ``examples/batch_input.jsonl`` and print the results.

The same job from the shell::

    trio-orchestrator batch examples/batch_input.jsonl --out results.jsonl

Run it: ``python examples/batch_job.py [OUTPUT_DIR]``. Rerun it and everything is skipped:
the job resumes from its output.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from trio_orchestrator import EchoWorker
from trio_orchestrator.batch import BatchSummary, run_batch

HERE = Path(__file__).parent


async def main(out_dir: Path) -> BatchSummary:
    """Run the example batch into ``out_dir`` and print both files."""
    out = out_dir / "results.jsonl"
    summary = await run_batch(
        HERE / "batch_input.jsonl",
        out,
        worker=EchoWorker(token_delay=0.01),
        concurrency=4,
        warn=lambda line: print("bad input:", line, file=sys.stderr),
    )
    print(summary)
    for path in (out, out.with_name(out.name + ".dead")):
        print(f"--- {path.name}")
        print(path.read_text(), end="")
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as directory:
            trio.run(main, Path(directory))
