"""The service writes every JSON body through one encoder (service/jsonenc.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import orjson

from trio_orchestrator.service.jsonenc import json_bytes

SERVICE = Path(__file__).parent.parent / "trio_orchestrator" / "service"

# Encoders and where each may appear. messages_request.py turns an Anthropic tool_use input
# into the string a ToolCall carries: request parsing, not a response body.
ENCODERS = {"json.dumps", "json.dump", "json.JSONEncoder", "orjson.dumps"}
ALLOWED = {("jsonenc.py", "json.JSONEncoder"), ("jsonenc.py", "orjson.dumps")}
ALLOWED |= {("messages_request.py", "json.dumps")}
ALLOWED |= {("admin_requests.py", "json.dumps")}  # the request log's page cursor, no answer


def _encoder_uses(path: Path) -> set[tuple[str, str]]:
    """(module, encoder) for each JSON encoder a service module names, and any import of
    Starlette's own JSONResponse (which renders with json.dumps)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (name := f"{node.value.id}.{node.attr}") in ENCODERS:
                found.add((path.name, name))
        elif isinstance(node, ast.ImportFrom) and _starlette_json_response(node):
            found.add((path.name, "starlette JSONResponse"))
    return found


def _starlette_json_response(node: ast.ImportFrom) -> bool:
    starlette = (node.module or "").startswith("starlette")
    return starlette and any(alias.name == "JSONResponse" for alias in node.names)


def test_no_service_module_encodes_json_but_the_encoder() -> None:
    """json.dumps, JSONEncoder, orjson.dumps and Starlette's JSONResponse appear nowhere in
    service/ but in jsonenc.py (and the one request-side use named in ALLOWED)."""
    found = set().union(*(_encoder_uses(p) for p in sorted(SERVICE.glob("*.py"))))
    allowed_here = {("jsonenc.py", "starlette JSONResponse")} | ALLOWED
    assert found - allowed_here == set()


def test_json_bytes_is_compact_orjson() -> None:
    """An ordinary value is orjson's compact UTF-8, the bytes the fast path sends."""
    data = {"a": [1, 2.5, None, True], "é": "ü", 3: "non-string key"}
    assert json_bytes(data) == orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    assert json_bytes(data) == '{"a":[1,2.5,null,true],"é":"ü","3":"non-string key"}'.encode()


def test_what_orjson_refuses_is_still_written() -> None:
    """A lone surrogate (a prompt echoed back) and an integer past 64 bits fall back to the
    standard library, escaped, instead of failing the response."""
    data = {"content": "\udc80 lone", "big": 2**70}
    assert json.loads(json_bytes(data)) == data
    assert json_bytes(data).isascii()
