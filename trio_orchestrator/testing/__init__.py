"""The test kit: fault-injecting fake providers for users' own tests."""

from .fake_provider import (
    Behaviour,
    FakeProvider,
    FakeProviderStatistics,
    RecordedRequest,
    open_fake_provider,
)

__all__ = [
    "Behaviour",
    "FakeProvider",
    "FakeProviderStatistics",
    "RecordedRequest",
    "open_fake_provider",
]
