"""The presets' share of the conformance suite: each test case that runs against every
upstream kind also runs against one preset (``conftest.preset_for``), and the cycle must give
every preset in the table many test cases -- a preset added to the table is put under the
suite without anyone listing it."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

from trio_orchestrator.workers.presets import PRESETS

from .conftest import PRESET_CYCLE, PRESET_ID

#: The fewest test cases each preset must meet.
AT_LEAST = 8

ROOT = Path(__file__).parents[2]


def _collected() -> list[str]:
    """The node ids of the conformance suite's preset runs, as pytest collects them."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    command += [str(Path(__file__).parent), "-k", PRESET_ID]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_cycle_is_every_preset_of_the_table() -> None:
    """The presets the suite cycles through are exactly the preset table's."""
    assert set(PRESET_CYCLE) == set(PRESETS)


def test_every_preset_meets_many_test_cases() -> None:
    """Each preset in the table is the upstream of at least ``AT_LEAST`` collected cases."""
    found = re.compile(re.escape(PRESET_ID) + r"([a-z]+)")
    counts = collections.Counter(
        match[1] for nodeid in _collected() if (match := found.search(nodeid))
    )
    assert {preset: counts[preset] for preset in PRESETS} == {
        preset: max(counts[preset], AT_LEAST) for preset in PRESETS
    }
