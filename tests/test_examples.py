"""Every example script runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("quickstart.py", "submitted=3 completed=3 shed=0"),
        ("streaming.py", "[done: stop"),
        ("custom_retriever.py", "Refunds are issued within 14 days"),
        (
            "observed_pipeline.py",
            'trio_orchestrator_pipeline_requests_total{outcome="completed"} 3.0',
        ),
        ("serve_with_openai_sdk.py", "usage: 8 tokens"),
        ("virtual_keys.py", "refused: 429 insufficient_quota"),
        ("model_catalogue.py", 'trio_orchestrator_cost_usd_total{model="gpt-4o-mini"'),
        ("bedrock_provider.py", "signed: AWS4-HMAC-SHA256 Credential=AKIAFAKEBEDROCK00001/"),
        ("bedrock_provider.py", "embeddings: 2 vectors of 1024 values"),
        (
            "config_reload.py",
            "refused  resilience.cache.ttl: no running part takes this option",
        ),
    ],
)
def test_example_runs(script: str, expected: str) -> None:
    """The example exits 0 and its output shows the feature working."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
