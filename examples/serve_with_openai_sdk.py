"""Start the service inside a Trio program and call it with the official OpenAI SDK.

    pip install 'trio-orchestrator[examples]'   # the OpenAI SDK
    python examples/serve_with_openai_sdk.py

The service listens on a free port of 127.0.0.1 with the echo worker (no key needed), the SDK
asks for a completion, streams another, and the service drains and stops.
"""

from __future__ import annotations

from functools import partial

import openai
import trio

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.service import serve


async def main() -> None:
    config = Config(service=ServiceConfig(port=0))
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        url = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        print(f"service listening on {url}")

        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed")
        answer = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "Hello, gateway!"}]
        )
        print("completion:", answer.choices[0].message.content)

        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "streamed word by word"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print("chunk:", repr(chunk.choices[0].delta.content))
                elif chunk.usage is not None:
                    print("usage:", chunk.usage.total_tokens, "tokens")
        await client.close()
        stop.set()  # drain and stop


if __name__ == "__main__":
    trio.run(main)
