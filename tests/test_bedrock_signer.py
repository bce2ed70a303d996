"""The Bedrock worker's SigV4 signer: byte-identical to plain botocore for the same request
and time, and to AWS's published test vectors (the served path, where the fake re-signs
every request with plain botocore: tests/conformance/test_bedrock_upstream.py)."""

from __future__ import annotations

import datetime
import importlib
import json
from typing import Any

import httpx
import pytest

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.workers.bedrock import AWSCredentials, _SigV4Signer

#: The credentials and time of AWS's Signature Version 4 test suite.
SUITE_KEY, SUITE_SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TIME = datetime.datetime(2015, 8, 30, 12, 36, 0)
SIGNED = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")

# botocore ships no type hints: its modules are used as Any.
auth: Any = importlib.import_module("botocore.auth")
awsrequest: Any = importlib.import_module("botocore.awsrequest")
credentials: Any = importlib.import_module("botocore.credentials")


class Clock:
    """botocore's clock, set by the test (both signers read ``get_current_datetime``)."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self, remove_tzinfo: bool = True) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Freeze the time botocore signs at (the only way to give SigV4Auth a time)."""
    frozen = Clock(SUITE_TIME)
    monkeypatch.setattr(auth, "get_current_datetime", frozen)
    return frozen


def plain_botocore(
    request: httpx.Request, key: str, secret: str, token: str | None, region: str, service: str
) -> dict[str, str]:
    """The headers plain botocore signs ``request`` with: an AWSRequest and SigV4Auth."""
    headers = {"host": request.headers["host"]}
    if "content-type" in request.headers:
        headers["content-type"] = request.headers["content-type"]
    aws = awsrequest.AWSRequest(
        method=request.method, url=str(request.url), data=request.content, headers=headers
    )
    signer = auth.SigV4Auth(credentials.Credentials(key, secret, token), service, region)
    signer.add_auth(aws)
    return {name: aws.headers[name] for name in SIGNED if name in aws.headers}


def signed_by(signer: _SigV4Signer, request: httpx.Request) -> dict[str, str]:
    """The headers the worker's signer puts on ``request``."""
    signer(request)
    return {name: request.headers[name] for name in SIGNED if name in request.headers}


def post(url: str, body: bytes, content_type: str | None = "application/json") -> httpx.Request:
    """A request as the worker builds it."""
    headers = {} if content_type is None else {"content-type": content_type}
    return httpx.Request("POST", url, content=body, headers=headers)


BODIES = [
    b"",
    json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]}).encode(),
    json.dumps({"text": "naïve — 日本語 🚀"}, ensure_ascii=False).encode(),
    b"x" * 100_000,
]
URLS = [
    "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse",
    "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude%3A2/converse-stream",
    "http://127.0.0.1:8123/model/a%2Fb%20c/invoke?z=1&a=2&a=1",
    "https://example.amazonaws.com/a/./b/../c//d",
]


@pytest.mark.parametrize(
    ("name", "request_", "signature"),
    [
        (
            "get-vanilla",
            httpx.Request("GET", "https://example.amazonaws.com/"),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-vanilla-query-order-key-case",
            httpx.Request("GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1"),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "post-x-www-form-urlencoded",
            post(
                "https://example.amazonaws.com/",
                b"Param1=value1",
                "application/x-www-form-urlencoded",
            ),
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
    ],
)
def test_the_signer_matches_aws_published_test_vectors(
    clock: Clock, name: str, request_: httpx.Request, signature: str
) -> None:
    """Three cases of AWS's SigV4 test suite, signed by the worker's signer, carry AWS's
    published signatures."""
    signer = _SigV4Signer(
        AWSCredentials(SUITE_KEY, Secret(SUITE_SECRET)), "us-east-1", service="service"
    )
    headers = signed_by(signer, request_)
    signed = "content-type;host;x-amz-date" if request_.method == "POST" else "host;x-amz-date"
    assert headers == {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
        f"aws4_request, SignedHeaders={signed}, Signature={signature}",
        "X-Amz-Date": "20150830T123600Z",
    }, name


@pytest.mark.parametrize("token", [None, "session-token", "FwoGZX//+token=="])
@pytest.mark.parametrize("url", URLS)
def test_the_signature_is_plain_botocores_byte_for_byte(
    clock: Clock, url: str, token: str | None
) -> None:
    """For every body, URL and session token, at several times one signer lives through (a
    second later, the next day: the kept timestamp and signing key move on), the signer's
    headers are exactly plain botocore's."""
    signer = _SigV4Signer(
        AWSCredentials(
            "AKIAEXAMPLE", Secret("s3cr3t/key"), None if token is None else Secret(token)
        ),
        "eu-west-3",
    )
    times = [
        SUITE_TIME,
        SUITE_TIME + datetime.timedelta(microseconds=999_999),
        SUITE_TIME + datetime.timedelta(seconds=1),
        SUITE_TIME + datetime.timedelta(days=1),
        SUITE_TIME,
    ]
    for now in times:
        clock.now = now
        for body in BODIES:
            for content_type in ("application/json", None):
                ours = signed_by(signer, post(url, body, content_type))
                theirs = plain_botocore(
                    post(url, body, content_type),
                    "AKIAEXAMPLE",
                    "s3cr3t/key",
                    token,
                    "eu-west-3",
                    "bedrock",
                )
                assert ours == theirs, (now, body[:20], content_type)
                assert ours["X-Amz-Date"] == now.strftime("%Y%m%dT%H%M%SZ")


def test_a_request_signed_again_replaces_its_signature(clock: Clock) -> None:
    """A retried request signed again a day later carries the new signature only (one
    Authorization, date and token header each), the one plain botocore gives then."""
    signer = _SigV4Signer(AWSCredentials("AKIAEXAMPLE", Secret("k"), Secret("t")), "us-east-1")
    request = post(URLS[0], BODIES[1])
    signer(request)
    clock.now = SUITE_TIME + datetime.timedelta(days=1)
    signer(request)
    for name in SIGNED:
        assert len(request.headers.get_list(name)) == 1
    expected: Any = plain_botocore(
        post(URLS[0], BODIES[1]), "AKIAEXAMPLE", "k", "t", "us-east-1", "bedrock"
    )
    assert {name: request.headers[name] for name in SIGNED} == expected


def test_one_signer_interleaving_many_urls_in_one_second_signs_each_as_botocore(
    clock: Clock,
) -> None:
    """Within one second a signer keeps a canonical-request head per URL and signed-header
    set: requests interleaving more URLs than it keeps (so it drops them and starts again),
    bodies and content types are each signed exactly as plain botocore signs them."""
    signer = _SigV4Signer(AWSCredentials("AKIAEXAMPLE", Secret("k"), Secret("t")), "us-east-1")
    urls = [*URLS, *(f"{URLS[0]}?n={n}" for n in range(300))]
    for i, url in enumerate(urls * 2):
        body, content_type = BODIES[i % 3], ("application/json", None)[i % 2]
        ours = signed_by(signer, post(url, body, content_type))
        theirs = plain_botocore(
            post(url, body, content_type), "AKIAEXAMPLE", "k", "t", "us-east-1", "bedrock"
        )
        assert ours == theirs, (url, body[:20], content_type)
