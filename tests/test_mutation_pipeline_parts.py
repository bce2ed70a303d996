"""Behaviour of the small pipeline modules (prompt assembly, output sinks, statistics) that
their mutation session showed unpinned."""

from __future__ import annotations
