"""Virtual keys and spend: create a key through the admin API, use it with the OpenAI SDK,
read what it cost, watch its budget refuse, revoke it.

    pip install 'trio-orchestrator[examples]'   # the OpenAI SDK
    python examples/virtual_keys.py

The gateway fronts a (fake, local) OpenAI-compatible upstream serving gpt-4o-mini, whose
prices the bundled catalogue knows. It has one admin key from its configuration; the
virtual key is created at run time, kept in SQLite (here a temporary file), and priced
from the catalogue. See docs/keys-and-spend.md.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import httpx
import openai
import trio

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_provider import open_fake_provider

ADMIN_KEY = "sk-admin-example"


def configuration(upstream: str, database: Path) -> Config:
    return parse_config(f"""
[service]
port = 0
[[service.api_keys]]
name = "operator"
key = "{ADMIN_KEY}"
admin = true

[[providers.providers]]
kind = "openai"
name = "local"
base_url = "{upstream}"

[storage]
path = "{database}"
""")


async def ask(url: str, key: str) -> str:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there!"}]
        )
    return answer.choices[0].message.content or ""


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with open_fake_provider() as fake, trio.open_nursery() as nursery:
            config = configuration(fake.openai_base_url, Path(directory) / "gateway.sqlite")
            stop = trio.Event()
            url = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
            admin = httpx.AsyncClient(
                base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}
            )
            async with admin:
                created = await admin.post(
                    "/v1/admin/keys",
                    json={"label": "team-a", "models": ["gpt-4o-mini"], "budget": 0.00001},
                )
                key = created.json()
                print(f"created {key['id']} ({key['label']}): secret {key['key'][:9]}…")
                print("answer:", await ask(url, key["key"]))
                spend = (await admin.get("/v1/admin/spend", params={"group_by": "key"})).json()
                for row in spend["data"]:
                    print(
                        f"spend: {row['key']} {row['requests']} request(s),",
                        f"{row['prompt_tokens']}+{row['completion_tokens']} tokens,",
                        f"${row['cost_usd']:.8f}",
                    )
                for _ in range(3):
                    try:
                        await ask(url, key["key"])
                    except openai.RateLimitError as exc:
                        print("refused:", exc.status_code, exc.code)
                        break
                await admin.delete(f"/v1/admin/keys/{key['id']}")
                try:
                    await ask(url, key["key"])
                except openai.AuthenticationError as exc:
                    print("after revoking:", exc.status_code)
            stop.set()


if __name__ == "__main__":
    trio.run(main)
