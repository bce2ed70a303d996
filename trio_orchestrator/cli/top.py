"""``trio-orchestrator top``: a live terminal dashboard of a running service.

Every ``--interval`` seconds it reads ``GET /v1/stats``, ``GET /metrics`` and, when the
service has it, ``GET /v1/admin/spend?group_by=key``, and redraws: requests per second,
latency percentiles, requests in flight per stage, errors by class, each provider's health
and the keys that spent most. The numbers are computed in :mod:`.top_model`; this module
polls and draws. It needs ``rich`` (the ``tui`` extra), imported only when the command runs.

An unreachable service is a line on the screen, retried every interval, never a traceback.
``q`` or Ctrl-C quits with status 0, leaving the terminal as it was.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
import trio

from .top_model import Poll, Scrape, Screen, build_screen, parse_metrics, parse_spend

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ["poll_service", "register", "render", "run"]

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "TRIO_ORCHESTRATOR_API_KEY"
INSTALL_HINT = (
    "trio-orchestrator top needs rich, which is not installed: pip install 'trio-orchestrator[tui]'"
)
QUIT_KEYS = frozenset(b"qQ")


def register(subparsers: Any) -> None:
    """Add the ``top`` subcommand."""
    parser = subparsers.add_parser(
        "top",
        help="a live terminal dashboard of a running service",
        description="Watch a running service: throughput, latency, stages, errors, "
        "providers and spend. q or Ctrl-C quits.",
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the service's address (default: {DEFAULT_URL})"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help=f"the environment variable holding a key of the service (default: {API_KEY_ENV}, "
        "if set); an admin key also shows spend",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default: 1)",
    )
    parser.set_defaults(func=run)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.1):
        raise argparse.ArgumentTypeError(f"must be seconds ≥ 0.1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Show the dashboard until ``q`` or Ctrl-C; return the exit status.

    Returns:
        0 when the user quit, 1 when ``rich`` is not installed, 2 when ``--api-key-env``
        names a variable that is not set.
    """
    try:
        from rich.console import Console
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    if args.api_key_env and not os.environ.get(args.api_key_env):
        print(
            f"--api-key-env: the environment variable {args.api_key_env} is not set",
            file=sys.stderr,
        )
        return 2
    key = os.environ.get(args.api_key_env or API_KEY_ENV) or None
    console = Console(highlight=False)
    try:
        with _keys_one_by_one():
            trio.run(_dashboard, service_root(args.url), key, args.interval, console)
    except* KeyboardInterrupt:
        pass  # Ctrl-C before the dashboard listens for it: still a way to quit, not a failure
    return 0


def service_root(url: str) -> str:
    """The service's root for ``url`` (``/v1`` and trailing slashes dropped)."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


@contextmanager
def _keys_one_by_one() -> Iterator[None]:
    """The terminal in cbreak mode (keys arrive without Enter, not echoed; Ctrl-C still a
    signal) for the block, and as it was afterwards; nothing when stdin is no terminal."""
    if not os.isatty(0):
        yield
        return
    saved = termios.tcgetattr(0)
    try:
        # TCSANOW, not the default TCSAFLUSH: a key typed while the command started counts.
        tty.setcbreak(0, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


async def _dashboard(url: str, key: str | None, interval: float, console: Console) -> None:
    from rich.live import Live

    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    timeout = httpx.Timeout(max(interval, 2.0))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as client:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            live.update(_waiting(url), refresh=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_refresh, client, url, interval, live)
                await _until_quit()
                nursery.cancel_scope.cancel()


async def _refresh(client: httpx.AsyncClient, url: str, interval: float, live: Live) -> None:
    previous: Poll | None = None
    while True:
        started = trio.current_time()
        current = await poll_service(client, url, started)
        live.update(render(build_screen(url, previous, current), interval), refresh=True)
        previous = current
        await trio.sleep_until(started + interval)


async def _until_quit() -> None:
    """Return when ``q`` is typed or Ctrl-C pressed.

    Ctrl-C is received as a signal here rather than raised as KeyboardInterrupt wherever
    the program happens to be (halfway through drawing a frame, say), so quitting is always
    the same orderly way out.
    """
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_then_cancel, _key_q, nursery.cancel_scope)
            nursery.start_soon(_then_cancel, interrupts.__anext__, nursery.cancel_scope)


async def _then_cancel(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


async def _key_q() -> None:
    """Return when ``q`` is typed; never when stdin is no terminal or ends."""
    if not os.isatty(0):
        await trio.sleep_forever()
    while True:
        # Waiting for readability leaves the descriptor blocking: stdin often shares its
        # open file with stdout, which must stay blocking for the screen's writes.
        await trio.lowlevel.wait_readable(0)
        typed = os.read(0, 64)
        if not typed:
            await trio.sleep_forever()  # end of input: no more keys, Ctrl-C still quits
        if QUIT_KEYS.intersection(typed):
            return


async def poll_service(client: httpx.AsyncClient, url: str, at: float) -> Poll:
    """One round of reading the service.

    Args:
        client: an HTTP client whose base URL is the service's root.
        url: that root, for messages.
        at: the time of the round (``trio.current_time()``).

    Returns:
        what the service answered, or the reason it could not be read in ``error``.
    """
    try:
        stats = await client.get("/v1/stats")
    except httpx.HTTPError as exc:
        return Poll(at, error=f"cannot reach {url}: {_reason(exc)}")
    if stats.status_code in (401, 403):
        return Poll(
            at, error=f"{url} refused the key ({stats.status_code}): pass one with --api-key-env"
        )
    if stats.status_code != 200:
        return Poll(at, error=f"{url}/v1/stats answered {stats.status_code}")
    try:
        body = stats.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return Poll(at, error=f"{url}/v1/stats answered no JSON object: is this the gateway?")
    try:
        return Poll(at, metrics=await _metrics(client), stats=body, spend=await _spend(client))
    except httpx.HTTPError as exc:
        return Poll(at, error=f"cannot reach {url}: {_reason(exc)}")


async def _metrics(client: httpx.AsyncClient) -> Scrape | None:
    answer = await client.get("/metrics")
    if answer.status_code != 200:
        return None  # metrics switched off: the rest still shows
    try:
        return parse_metrics(answer.text)
    except ValueError:
        return None


async def _spend(client: httpx.AsyncClient) -> list[tuple[str, float]] | None:
    # Persisted spend, where the service keeps it and the key is an admin's; else None and
    # the budget ledger of /v1/stats is shown instead.
    answer = await client.get("/v1/admin/spend", params={"group_by": "key"})
    if answer.status_code != 200:
        return None
    try:
        return parse_spend(answer.json())
    except ValueError:
        return None


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    error = _os_error(exc)
    if error is not None and error.errno is not None:
        return os.strerror(error.errno).lower()  # "connection refused", "no route to host", …
    return str(exc) or type(exc).__name__


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first OSError with an errno behind ``exc`` (through causes and exception groups:
    trio's connect tries every address and groups their errors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                if (found := _os_error(inner)) is not None:
                    return found
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------------------ drawing


def _waiting(url: str) -> RenderableType:
    from rich.text import Text

    return Text(f"trio-orchestrator top · {url} · connecting…")


def render(screen: Screen, interval: float) -> RenderableType:
    """The frame for ``screen``, as rich renderables (drawn by :class:`rich.live.Live`).

    Args:
        screen: the rows to draw.
        interval: seconds between refreshes, for the header and the retry line.

    Returns:
        one renderable for the whole screen.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    state = "" if screen.error else (" · draining" if screen.draining else " · up")
    header = Text(f"trio-orchestrator top · {screen.url}{state} · every {interval:g} s · q quits")
    header.stylize("bold")
    if screen.error is not None:
        line = Text(f"✗ {screen.error}", style="red")
        return Group(header, Text(""), line, Text(f"retrying every {interval:g} s"))
    window = "since start" if screen.window is None else f"last {screen.window:.1f} s"
    top = Table.grid(padding=(0, 4))
    top.add_row(_throughput(screen), _latency(screen, window))
    middle = Table.grid(padding=(0, 4))
    middle.add_row(_stages(screen), _errors(screen))
    gap = Text("")
    return Group(header, gap, top, gap, middle, gap, _providers(screen), gap, _spenders(screen))


def _cell(value: object) -> Any:
    from rich.text import Text

    return Text(str(value))


def _section(title: str, table: Any) -> Any:
    """``table`` under a bold title of its own (a table's title wraps at its width)."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="bold"), table)


def _table(*columns: str, right: tuple[str, ...] = ()) -> Any:
    from rich.table import Table

    table = Table(box=None, show_header=bool(columns), pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _throughput(screen: Screen) -> Any:
    from rich.table import Table

    assert screen.throughput is not None
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_row(_cell(f"requests/s {_rate(screen.throughput.requests_per_second)}"))
    outcomes = screen.throughput.outcomes
    for name in ("submitted", "completed", "failed", "shed", "expired", "cancelled"):
        table.add_row(_cell(f"{name} {outcomes.get(name, 0)}"))
    return _section("Requests", table)


def _latency(screen: Screen, window: str) -> Any:
    table = _table("", "p50", "p90", "p99", "n", right=("p50", "p90", "p99", "n"))
    for row in screen.latency:
        cells = (row.name, *map(_seconds, (row.p50, row.p90, row.p99)), row.count)
        table.add_row(*map(_cell, cells))
    if not screen.latency:
        table.add_row(_cell("metrics off"), *(_cell("-") for _ in range(4)))
    return _section(f"Latency ({window})", table)


def _stages(screen: Screen) -> Any:
    flight = screen.in_flight
    title = (
        f"In flight {flight.get('in_flight', 0)} · inference "
        f"{flight.get('inference_active', 0)}/{flight.get('inference_slots', 0)} · waiting "
        f"{flight.get('waiting_to_enter', 0)}"
    )
    numbers = ("queued", "capacity", "processed", "shed")
    table = _table("stage", *numbers, right=numbers)
    for stage in screen.stages:
        cells = (stage.name, stage.queue_depth, stage.capacity, stage.processed, stage.shed)
        table.add_row(*map(_cell, cells))
    return _section(title, table)


def _errors(screen: Screen) -> Any:
    table = _table("class", "total", "/s", right=("total", "/s"))
    for row in screen.errors:
        table.add_row(*map(_cell, (row.name, row.total, _rate(row.per_second))))
    if not screen.errors:
        table.add_row(_cell("none"), _cell(""), _cell(""))
    return _section("Errors", table)


def _providers(screen: Screen) -> Any:
    table = _table("provider", "req/s", "breaker", "keys ready", "resting", right=("req/s",))
    for row in screen.providers:
        keys = "-" if row.keys_total is None else f"{row.keys_ready}/{row.keys_total}"
        resting = ", ".join(row.resting) or "-"
        cells = (row.name, _rate(row.requests_per_second), row.breaker, keys, resting)
        table.add_row(*map(_cell, cells))
    return _section("Providers", table)


def _spenders(screen: Screen) -> Any:
    source = screen.spend_source or "none known: only [routing] prices requests"
    table = _table("key", "spend", right=("spend",))
    for name, dollars in screen.spenders:
        table.add_row(_cell(name), _cell(f"${dollars:.4f}"))
    return _section(f"Top keys by spend ({source})", table)
