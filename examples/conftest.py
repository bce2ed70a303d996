"""Hypothesis profiles for the examples' tests (``HYPOTHESIS_PROFILE=examples`` is quick)."""

import os

from hypothesis import settings

settings.register_profile("examples", max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
