"""Shared test configuration: Hypothesis profiles and common fixtures.

Profiles (choose with ``HYPOTHESIS_PROFILE``): ``dev`` (the default, quick), ``ci`` (enough
examples to matter, derandomized so CI is repeatable), ``thorough`` (nightly-style).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# tiktoken comes with langchain-openai (a dev dependency) and would download its encoding from
# the internet on first use; the tests count tokens with the documented heuristic instead.
os.environ.setdefault("TRIO_ORCHESTRATOR_TOKENIZER", "heuristic")

_SLOW_OK = [HealthCheck.too_slow]

settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK
)
# Mutation testing (scripts/mutation.py): the same examples every run, so a mutant's verdict
# does not depend on luck, and no example database carried from one mutant to the next.
settings.register_profile(
    "mutation",
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_SLOW_OK,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
