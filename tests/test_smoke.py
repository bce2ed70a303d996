"""The package imports and the echo pipeline answers."""

from trio_orchestrator import EchoWorker, PromptRequest, open_pipeline


async def test_echo_pipeline_answers() -> None:
    """A request through the default pipeline comes back as its own echo."""
    async with open_pipeline(EchoWorker()) as pipeline:
        completion = await pipeline.submit(PromptRequest(input="hello world"))
    assert completion.text == "hello world"
