"""Behaviour of the semantic cache that its mutation session showed unpinned: the index's two
kernels on the same inputs, scoping, thresholds, expiry, eligibility, counters."""

from __future__ import annotations
