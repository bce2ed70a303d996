"""The Grafana dashboard is valid JSON and asks only for metrics the exposition has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from observability_helpers import GateRetriever, ScriptedWorker, scripted_workload, small_config
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trio_orchestrator import (
    EchoWorker,
    GenerationParams,
    PromptRequest,
    open_gateway,
    open_pipeline,
)
from trio_orchestrator.config import parse_config
from trio_orchestrator.observability import (
    MetricsConfig,
    ModelPrice,
    instrument_pipeline,
    render_metrics,
)

DASHBOARD = Path(__file__).parent.parent / "docs" / "dashboards" / "trio_orchestrator.json"
METRIC = re.compile(r"\btrio_orchestrator_[a-z0-9_]+")


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text in the dashboard: panel targets and template variables."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


async def exported_names() -> set[str]:
    """Names of every family and sample of a workload's exposition (prices configured)."""
    registry = CollectorRegistry()
    prices = {"gpt-test": ModelPrice(input_per_million=1.0, output_per_million=2.0)}
    config = small_config(metrics=MetricsConfig(prices=prices))
    gate = GateRetriever()
    async with open_pipeline(ScriptedWorker(), config, retriever=gate) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        await scripted_workload(pipeline, gate)
    families = list(text_string_to_metric_families(render_metrics(registry).decode()))
    names = {f.name for f in families} | {s.name for f in families for s in f.samples}
    return names | await layer_names()


LAYERS = """
[resilience.cache]
enabled = true
[resilience.coalescing]
enabled = true
[resilience.rate_limits]
enabled = true
limits = [{ scope = "provider", requests_per_second = 100.0 }]
[resilience.breaker]
enabled = true
[resilience.retry]
enabled = true
"""


async def layer_names() -> set[str]:
    """Names the resilience layers export, with every layer on."""
    registry = CollectorRegistry()
    config = parse_config(LAYERS)
    async with open_gateway(config, worker=EchoWorker(), registry=registry) as gateway:
        request = PromptRequest(input="x", params=GenerationParams(temperature=0))
        await gateway.pipeline.submit(request)
        # Read before the gateway closes: closing takes its metrics out of the registry.
        exposition = render_metrics(registry).decode()
    families = list(text_string_to_metric_families(exposition))
    return {f.name for f in families} | {s.name for f in families for s in f.samples}


def test_dashboard_panels_each_have_a_query() -> None:
    """Every panel except rows queries Prometheus through the dashboard's data source."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


async def test_every_dashboard_metric_is_exported(autojump_clock: object) -> None:
    """Each metric name a dashboard query uses appears in the exposition."""
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for query in queries(dashboard) for name in METRIC.findall(query)}
    assert len(used) > 10
    assert used - await exported_names() == set()
