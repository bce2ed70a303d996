"""Run pytest with ``import httpx`` resolving to its fork ``httpx2``, process-wide.

The provider workers are written against the API both libraries share; this runs the whole
provider suite (MockTransport included) on httpx2, to show that either client passes it::

    python scripts/pytest_httpx2.py tests/test_openai_worker.py tests/test_providers_e2e.py
"""

from __future__ import annotations

import sys

import httpx2

httpx2.alias_httpx()  # before anything imports httpx

import httpx  # noqa: E402
import pytest  # noqa: E402

if __name__ == "__main__":
    assert httpx is httpx2, "httpx was imported before the alias"
    # httpx2 imports anyio (and so its pytest plugin) before pytest can rewrite it.
    sys.exit(pytest.main(["-W", "ignore::pytest.PytestAssertRewriteWarning", *sys.argv[1:]]))
