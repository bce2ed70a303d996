"""Property-based fuzzing of every operation in /openapi.json: no 5xx, no hang.

Schemathesis (its command line, which runs Hypothesis underneath) drives a real
``trio-orchestrator serve`` process on a free port, with valid and invalid inputs generated
from the service's own OpenAPI document.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

LISTENING = re.compile(r"serving on (http://\S+)")
# Per operation; the active Hypothesis profile may ask for fewer (ci: 50, dev: 30).
MAX_EXAMPLES = min(50, settings().max_examples)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    """A ``trio-orchestrator serve`` process on 127.0.0.1, port 0."""
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if match := LISTENING.search(line):
                yield match.group(1)
                break
        else:
            pytest.fail("serve exited before listening")
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def test_no_input_makes_the_service_fail_or_hang(service_url: str, tmp_path: Path) -> None:
    """Every generated request, valid or not, is answered below 500 within 10 seconds."""
    command = [
        str(SCHEMATHESIS), "run", service_url + "/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(MAX_EXAMPLES),
        "--request-timeout", "10",
        "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    # Run where schemathesis may leave its report directory.
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:]
