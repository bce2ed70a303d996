"""SigV4 signing cost: the Bedrock worker's signer against plain botocore, same run.

Both sign the same ``httpx.Request`` (a Converse body of ``--body-bytes`` bytes, a session
token, the URL the worker sends to) and copy the same headers back onto it:

- ``botocore``: what the worker did before -- an ``AWSRequest`` built from the request and
  ``SigV4Auth.add_auth`` on it (the signing key derived, the headers canonicalised through
  ``email.message``, the body read through a prepared copy, every time);
- ``signer``: the worker's ``_SigV4Signer`` (botocore's ``SigV4Auth`` with the signing key kept
  per day, a minimal request, the canonical request but its payload hash kept per second and
  URL);
- ``crt``: botocore's own signer on AWS's C library (``botocore.crt.auth.CrtSigV4Auth``, as
  botocore uses it, over an ``AWSRequest``), only when ``awscrt`` is installed (it is not a
  dependency: it signed no faster than ``signer``; ``pip install awscrt`` to see it).

Each is timed over ``--requests`` fresh requests, ``--repeats`` times interleaved, in CPU
time of this thread (so that, on a loaded machine, time spent preempted does not count); the
best repeat is reported (microseconds per request), with the cost of building the request
alone for scale, and each signer's cost as a ratio of plain botocore's (what a loaded
machine still gives right). Ends with one line of JSON.

    python benchmarks/bench_sigv4.py [--quick] [--requests N] [--repeats R] [--body-bytes B]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.workers.bedrock import AWSCredentials, _SigV4Signer

URL = "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse-stream"
CREDENTIALS = AWSCredentials(
    "AKIDEXAMPLE", Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), Secret("session-token")
)


def _add_auth_signer(
    signer_class: Any, credentials: AWSCredentials, region: str
) -> Callable[[httpx.Request], None]:
    """A signer that builds a full AWSRequest and calls ``signer_class.add_auth`` for every
    request, copying the headers it adds onto the httpx request."""
    awsrequest: Any = importlib.import_module("botocore.awsrequest")
    botocore_credentials: Any = importlib.import_module("botocore.credentials")
    token = credentials.session_token
    signer = signer_class(
        botocore_credentials.Credentials(
            credentials.access_key_id,
            credentials.secret_access_key.reveal(),
            None if token is None else token.reveal(),
        ),
        "bedrock",
        region,
    )

    def sign(request: httpx.Request) -> None:
        headers = {"host": request.headers["host"]}
        if "content-type" in request.headers:
            headers["content-type"] = request.headers["content-type"]
        aws = awsrequest.AWSRequest(
            method=request.method, url=str(request.url), data=request.content, headers=headers
        )
        signer.add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]

    return sign


def plain_botocore(credentials: AWSCredentials, region: str) -> Callable[[httpx.Request], None]:
    """The signer as it was: a full AWSRequest and SigV4Auth.add_auth for every request."""
    # botocore ships no type hints: its modules are used as Any.
    auth: Any = importlib.import_module("botocore.auth")
    return _add_auth_signer(auth.SigV4Auth, credentials, region)


def crt_botocore(credentials: AWSCredentials, region: str) -> Callable[[httpx.Request], None]:
    """botocore's CRT signer (``awscrt``) as botocore uses it: an AWSRequest, ``add_auth``.

    Raises:
        ImportError: ``awscrt`` is not installed.
    """
    importlib.import_module("awscrt")
    importlib.import_module("botocore.auth")  # botocore.crt.auth imports it back: first
    crt_auth: Any = importlib.import_module("botocore.crt.auth")
    return _add_auth_signer(crt_auth.CrtSigV4Auth, credentials, region)


def _requests(count: int, body: bytes) -> list[httpx.Request]:
    return [
        httpx.Request("POST", URL, content=body, headers={"content-type": "application/json"})
        for _ in range(count)
    ]


def _time(sign: Callable[[httpx.Request], None], requests: list[httpx.Request]) -> float:
    started = time.thread_time()
    for request in requests:
        sign(request)
    return (time.thread_time() - started) / len(requests) * 1e6


def _build_cost(count: int, body: bytes) -> float:
    started = time.thread_time()
    _requests(count, body)
    return (time.thread_time() - started) / count * 1e6


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--requests", type=int, default=5000, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--body-bytes", type=int, default=600, help="the request body's size")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 200, 15
    text = "x" * max(0, args.body_bytes - 80)
    body = json.dumps(
        {"messages": [{"role": "user", "content": [{"text": text}]}], "inferenceConfig": {}}
    ).encode()
    signers: dict[str, Callable[[httpx.Request], None]] = {
        "botocore": plain_botocore(CREDENTIALS, "us-east-1"),
        "signer": _SigV4Signer(CREDENTIALS, "us-east-1"),
    }
    try:
        signers["crt"] = crt_botocore(CREDENTIALS, "us-east-1")
    except ImportError:
        pass  # awscrt is not installed: no crt row
    best: dict[str, float] = {name: float("inf") for name in signers}
    build = float("inf")
    for _ in range(args.repeats):
        build = min(build, _build_cost(args.requests, body))
        for name, sign in signers.items():
            best[name] = min(best[name], _time(sign, _requests(args.requests, body)))
    cut = 1 - best["signer"] / best["botocore"]
    crt = best.get("crt")
    conditions: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "requests": args.requests,
        "repeats": args.repeats,
        "body_bytes": len(body),
    }
    print(f"conditions: {conditions}")
    print(f"build httpx.Request      {build:8.1f} us")
    print(f"sign, plain botocore     {best['botocore']:8.1f} us")
    print(f"sign, the worker signer  {best['signer']:8.1f} us   ({cut:.0%} less)")
    if crt is None:
        print("sign, botocore's CRT     skipped: awscrt is not installed")
    else:
        times = crt / best["signer"]
        print(f"sign, botocore's CRT     {crt:8.1f} us   ({times:.2f}x the signer's)")
    figures = {
        "build_us": build,
        "botocore_us": best["botocore"],
        "signer_us": best["signer"],
        "crt_us": crt,
        "cut": cut,
        "signer_over_botocore": best["signer"] / best["botocore"],
        "signer_over_build": best["signer"] / build,
    }
    print(json.dumps({"quick": args.quick, **conditions, **figures}))


if __name__ == "__main__":
    main()
