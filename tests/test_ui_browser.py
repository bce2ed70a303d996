"""The web dashboard in a real browser (issue 19, item 5): headless Chromium from Debian's
package, driven by Playwright, against a ``serve`` process over real HTTP.

Every page loads with no console error and no page error; the overview shows the numbers
``/v1/stats`` answers after a known number of requests; a key created in the page lets a
request through (refused before), and revoking it in the page refuses it again (401).
Screenshots of each page go to ``$TRIO_ORCHESTRATOR_ARTIFACTS`` (else ``tests/artifacts/``),
and with ``TRIO_ORCHESTRATOR_UPDATE_SCREENSHOTS=1`` to ``docs/img/`` too.

The tests are synchronous (Playwright's sync API runs its own event loop, which must not be
inside Trio's); they skip, saying why, without Playwright or Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from service_helpers import serving_subprocess

from trio_orchestrator.cli.top_model import histogram_quantile

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium)"
)

ADMIN = "sk-admin-ui-tests"
CONFIG = f"""
[[service.api_keys]]
name = "ops"
key = "{ADMIN}"
admin = true

[storage]
backend = "sqlite"

[observability.metrics.prices.echo]
input_per_million = 1000.0
output_per_million = 2000.0

[resilience.breaker]
enabled = true
failure_threshold = 2
cooldown = 300.0

[[providers.providers]]
kind = "echo"
name = "local"
models = ["echo"]

# Nothing listens on port 9: its calls fail, and its breaker opens.
[[providers.providers]]
kind = "openai"
name = "down"
base_url = "http://127.0.0.1:9/v1"
api_keys = ["upstream-one", "upstream-two"]
models = ["gpt-down"]

[[routing.deployments]]
name = "echo-local"
model = "echo"
provider = "local"

[[routing.deployments]]
name = "gpt-down"
model = "gpt-down"
provider = "down"
"""
# A pipeline with room for one request at a time and a slow echo: a burst is shed into the
# dead letters (the same shape as tests/test_service_native.py's TINY).
SHEDDING = """
[pipeline]
inference_concurrency = 1
inference_capacity = 1
assemble_capacity = 1

[pipeline.priority]
max_waiting = 1

[service.echo]
first_token_delay = 0.5
"""
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TRIO_ORCHESTRATOR_ARTIFACTS") or REPO / "tests" / "artifacts")
UPDATE_DOCS = os.environ.get("TRIO_ORCHESTRATOR_UPDATE_SCREENSHOTS") == "1"
# The screenshots docs/operations.md shows (docs/img/dashboard-<name>.png).
DOCS_SHOTS = ("overview-traffic", "providers", "spend", "keys", "log", "letters")
PROMPTLY = 20_000  # milliseconds: a hang guard for what the page shows, never asserted on
PAGES = {
    "overview": "Overview",
    "providers": "Providers",
    "spend": "Spend",
    "log": "Request log",
    "keys": "Keys",
    "letters": "Dead letters",
}
STATS = ("submitted", "completed", "failed", "shed", "expired", "cancelled", "in_flight")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``serve`` process for the module: an admin key, SQLite storage, a priced echo."""
    config = tmp_path_factory.mktemp("ui") / "gateway.toml"
    config.write_text(CONFIG)
    with serving_subprocess(config) as url:
        yield url


@pytest.fixture(scope="module")
def shedding_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``serve`` process without keys whose pipeline sheds a burst (:data:`SHEDDING`)."""
    config = tmp_path_factory.mktemp("ui") / "shedding.toml"
    config.write_text(SHEDDING)
    with serving_subprocess(config) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@attrs.define
class Dashboard:
    """A page of the dashboard, and every console error and page error it had."""

    page: Any
    url: str
    problems: list[str] = attrs.field(factory=list)

    def open(self, tab: str = "overview") -> None:
        """Load the dashboard, type the admin key, and go to ``tab``."""
        self.page.goto(f"{self.url}/ui/")
        self.page.get_by_label("Admin key").fill(ADMIN)
        self.page.get_by_role("button", name="Use key").click()
        self.loaded("overview")
        if tab != "overview":
            self.go(tab)

    def go(self, tab: str) -> None:
        """Click ``tab``'s tab and wait until its page has loaded."""
        self.page.get_by_role("tab", name=PAGES[tab]).click()
        self.loaded(tab)

    def loaded(self, tab: str) -> None:
        """Wait until ``tab``'s page has shown what it fetched."""
        self.page.wait_for_selector(f"#page-{tab}[data-loaded=true]", timeout=PROMPTLY)

    def shot(self, name: str) -> None:
        """Save a screenshot as a test artifact (and for the docs when asked)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path))
        if UPDATE_DOCS and name in DOCS_SHOTS:
            shutil.copyfile(path, REPO / "docs" / "img" / path.name)


@pytest.fixture
def dashboard(browser: Any, service: str) -> Iterator[Dashboard]:
    """A fresh browser context (its own sessionStorage) on the dashboard, watched for errors."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    found = Dashboard(page, service)

    def console(message: Any) -> None:
        if message.type in ("error", "warning"):
            found.problems.append(f"console {message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: found.problems.append(f"page error: {error}"))
    yield found
    context.close()


def admin_client(url: str) -> httpx.Client:
    """An HTTP client with the admin key."""
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=20)


def chat(
    url: str, key: str | None, text: str = "hello there", model: str = "echo"
) -> httpx.Response:
    """One chat completion with ``key`` (none: no Authorization header)."""
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=20)


def test_every_page_loads_without_console_errors(dashboard: Dashboard) -> None:
    """Each tab loads what it shows with no console error and no uncaught page error; the
    arrow keys move between tabs."""
    assert chat(dashboard.url, ADMIN).status_code == 200
    dashboard.open()
    for tab in PAGES:
        dashboard.go(tab)
        dashboard.shot(tab)
    last = dashboard.page.get_by_role("tab", name=PAGES["letters"])
    last.press("ArrowRight")  # focused, from the last tab round to the first
    dashboard.loaded("overview")
    assert dashboard.page.evaluate("document.activeElement.id") == "tab-overview"
    assert dashboard.problems == []


def test_the_overview_shows_the_numbers_of_v1_stats(dashboard: Dashboard, service: str) -> None:
    """After a known number of requests, each count the overview shows is the one
    /v1/stats answers at that moment, and the rate and latency cards hold numbers."""
    with admin_client(service) as admin:
        before = admin.get("/v1/stats").json()["pipeline"]["completed"]
        dashboard.open()
        for n in range(7):
            assert chat(service, ADMIN, f"request {n}").status_code == 200
        completed = dashboard.page.locator("[data-stat=completed]")
        sync_api.expect(completed).to_have_text(str(before + 7), timeout=PROMPTLY)
        stats = admin.get("/v1/stats").json()["pipeline"]
    for name in STATS:
        shown = dashboard.page.locator(f"[data-stat={name}]").first.inner_text()
        assert shown == str(stats[name]), name
    sync_api.expect(dashboard.page.locator("#p50")).to_have_text(re.compile(r"^[0-9.]+ m?s$"))
    sync_api.expect(dashboard.page.locator("#rps")).to_have_text(re.compile(r"^[0-9]+\.[0-9]+$"))
    assert dashboard.page.locator("#chart-rps polyline").count() == 1
    dashboard.shot("overview-traffic")
    assert dashboard.problems == []


def test_a_failing_provider_shows_its_open_breaker_and_its_errors(
    dashboard: Dashboard, service: str
) -> None:
    """Calls to a provider nobody answers fail; the providers page shows its breaker open
    and its keys, and the overview lists the failures by class."""
    for _ in range(3):
        assert chat(service, ADMIN, model="gpt-down").status_code in (502, 503)
    dashboard.open("providers")
    row = dashboard.page.locator("#providers tbody tr", has_text="down")
    sync_api.expect(row).to_contain_text("open", timeout=PROMPTLY)
    sync_api.expect(row).to_contain_text("2/2")
    dashboard.shot("providers")
    dashboard.go("overview")
    errors = dashboard.page.locator("#errors")
    sync_api.expect(errors).to_contain_text("ProviderConnectionError", timeout=PROMPTLY)
    sync_api.expect(errors).to_contain_text("CircuitOpen")
    assert dashboard.problems == []


def test_a_key_created_in_the_page_lets_a_request_through_until_revoked_there(
    dashboard: Dashboard, service: str
) -> None:
    """No key is refused (401); a key created in the page, its secret read from the page,
    is served (200) and its spend is charged; rotated there, the old secret is refused and
    the new one served; revoked there, it is refused (401)."""
    assert chat(service, None).status_code == 401
    dashboard.open("keys")
    page = dashboard.page
    page.get_by_label("Label", exact=True).fill("browser-made")
    page.get_by_label("Owner").fill("ui tests")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret")
    sync_api.expect(secret).to_have_text(re.compile(r"^sk-to-"), timeout=PROMPTLY)
    key = secret.inner_text()
    dashboard.shot("keys")
    served = chat(service, key)
    assert served.status_code == 200, served.text
    page.get_by_role("button", name="Done").click()
    row = page.locator("#keys tbody tr", has_text="browser-made")
    key_id = row.locator("td").first.inner_text()
    page.get_by_role("button", name=f"Rotate key {key_id}").click()
    sync_api.expect(secret).not_to_have_text(key, timeout=PROMPTLY)
    sync_api.expect(secret).to_have_text(re.compile(r"^sk-to-"))
    old, key = key, secret.inner_text()
    assert chat(service, old).status_code == 401
    assert chat(service, key).status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Revoke key {key_id}").click()
    sync_api.expect(page.locator("#keys tbody tr", has_text=key_id)).to_have_count(
        0, timeout=PROMPTLY
    )
    assert chat(service, key).status_code == 401
    page.get_by_label("Show revoked keys").check()
    sync_api.expect(page.locator("#keys tbody tr", has_text=key_id)).to_contain_text("revoked")
    dashboard.go("spend")
    sync_api.expect(page.locator("#spend-by-key")).to_contain_text(key_id, timeout=PROMPTLY)
    dashboard.shot("spend")
    assert dashboard.problems == []


def test_the_request_log_lists_requests_by_model_a_page_at_a_time(
    dashboard: Dashboard, service: str
) -> None:
    """With the request log endpoint, a filter by model lists the requests sent, ten a
    page, and Next page shows the ones after them."""
    with admin_client(service) as admin:
        if admin.get("/v1/admin/requests", params={"limit": "1"}).status_code == 404:
            pytest.skip("this service has no /v1/admin/requests (the request log) yet")
    for n in range(12):
        assert chat(service, ADMIN, f"logged {n}").status_code == 200
    dashboard.open("log")
    page = dashboard.page
    page.get_by_label("Model", exact=True).fill("echo")
    page.get_by_label("Per page").select_option("10")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#log tbody tr", has_text="echo")
    sync_api.expect(rows.first).to_be_visible(timeout=PROMPTLY)
    sync_api.expect(page.locator("#log-note")).to_have_text("10 requests.")
    dashboard.shot("log")
    ids = page.locator("#log tbody tr td:first-child")
    first_page = set(ids.all_inner_texts())
    page.get_by_role("button", name="Next page").click()
    sync_api.expect(page.locator("#log-note")).to_contain_text("(next page)", timeout=PROMPTLY)
    assert ids.count() >= 1
    assert first_page.isdisjoint(ids.all_inner_texts())
    assert dashboard.problems == []


def test_without_the_request_log_the_page_says_so(dashboard: Dashboard, service: str) -> None:
    """Where the service has no request log, its page says it is not available, and no
    request fails in the console."""
    with admin_client(service) as admin:
        if admin.get("/ui/features.json").json()["request_log"]:
            pytest.skip("this service has the request log")
    dashboard.open("log")
    sync_api.expect(dashboard.page.locator("#log")).to_contain_text("request log not available")
    assert dashboard.problems == []


def test_a_dead_letter_is_listed_and_replayed_from_the_page(
    dashboard: Dashboard, shedding_service: str
) -> None:
    """A burst sheds requests into the dead letters; the page lists them, and its Replay
    button runs one again (completed), after which it is no longer listed."""
    prompts = [f"p{n}" for n in range(6)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(
            pool.map(
                lambda text: httpx.post(
                    f"{shedding_service}/v1/prompt", json={"input": text}, timeout=20
                ),
                prompts,
            )
        )
    shed = [a.json()["request_id"] for a in answers if a.status_code == 503]
    assert shed, [a.status_code for a in answers]
    dashboard.url = shedding_service
    dashboard.open("letters")
    page = dashboard.page
    for letter in shed:
        sync_api.expect(page.locator("#letters")).to_contain_text(letter)
    dashboard.shot("letters")
    page.get_by_role("button", name=f"Replay dead letter {shed[0]}").click()
    sync_api.expect(page.locator("#letters-note")).to_have_text(
        f"Replayed {shed[0]}: completed.", timeout=PROMPTLY
    )
    sync_api.expect(page.locator("#letters tbody tr", has_text=shed[0])).to_have_count(0)
    assert dashboard.problems == []


def test_the_pages_latency_quantiles_are_tops(dashboard: Dashboard) -> None:
    """The page's histogram_quantile (JavaScript) gives what trio-orchestrator top's
    (Python) gives for the same buckets: the two dashboards read /metrics alike."""
    dashboard.open()
    inf = float("inf")
    cases = [
        {0.005: 0.0, 0.01: 3.0, 0.1: 7.0, 1.0: 9.0, inf: 10.0},
        {0.1: 0.0, 1.0: 0.0, inf: 0.0},
        {0.5: 4.0, 2.0: 4.0, inf: 6.0},
        {-1.0: 2.0, 0.0: 2.0, inf: 2.0},
        {1.0: 5.0, 2.0: 4.0, inf: 6.0},  # a counter reset between scrapes
    ]
    for buckets in cases:
        pairs = [["+Inf" if b == inf else b, c] for b, c in buckets.items()]
        for q in (0.5, 0.9, 0.99):
            script = (
                "([pairs, q]) => quantile(q, new Map(pairs.map(([b, c]) =>"
                " [b === '+Inf' ? Infinity : b, c])))"
            )
            shown = dashboard.page.evaluate(script, [pairs, q])
            expected = histogram_quantile(q, buckets)
            assert shown == pytest.approx(expected), (buckets, q)
    assert dashboard.problems == []
