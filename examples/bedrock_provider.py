"""An AWS Bedrock provider: requests signed with SigV4, answers streamed over ConverseStream,
and embeddings from Titan Text Embeddings V2 over InvokeModel.

Runs offline against the fake provider, which speaks Bedrock's wire format and checks each
signature by signing the request again; for real AWS, drop ``base_url`` and give your region
and credentials (or ``AWS_*`` environment variables). Needs the bedrock extra:
``pip install 'trio-orchestrator[bedrock]'``.

python examples/bedrock_provider.py
"""

from __future__ import annotations

import trio

from trio_orchestrator import Config, Done, PromptRequest, TextDelta, open_gateway
from trio_orchestrator.testing import FakeBehaviour, open_fake_provider
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.embeddings import WorkerEmbedder


async def main() -> None:
    ((key_id, secret),) = CREDENTIALS.items()  # the fake's test credentials
    async with open_fake_provider(FakeBehaviour(text="Hello from Bedrock")) as fake:
        bedrock = ProviderConfig(
            "bedrock",
            "bedrock",
            base_url=fake.base_url,  # real AWS: leave out (bedrock-runtime.{region}...)
            region="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        request = PromptRequest(
            input="Say hello", params=GenerationParams(model="amazon.nova-lite-v1:0")
        )
        async with open_gateway(Config(providers=ProvidersConfig([bedrock]))) as gateway:
            async with gateway.pipeline.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        print(event.text, end="", flush=True)
                    elif isinstance(event, Done):
                        print(f"\n[done: {event.finish_reason}, {event.usage}]")
            sent = fake.requests[-1]
            print(f"POST {sent.path}")
            print(f"signed: {sent.headers['authorization'].split(',')[0]}")
            # Titan embeds one text per InvokeModel call: two texts are two signed calls.
            embedder = WorkerEmbedder(gateway.worker)
            vectors = await embedder.embed(["a cat", "a dog"], model="amazon.titan-embed-text-v2:0")
            print(f"embeddings: {len(vectors)} vectors of {len(vectors[0])} values")


if __name__ == "__main__":
    trio.run(main)
