"""Workers: the protocol, and the built-in providers."""

from .anthropic import AnthropicWorker
from .azure import AzureOpenAIWorker
from .balance import BalanceStatistics, LoadBalancedWorker, WorkerLoad
from .base import EventSink, ModelWorker, collect
from .config import ProviderConfig, ProvidersConfig, Timeouts
from .echo import EchoWorker
from .embeddings import WorkerEmbedder
from .factory import build_worker, make_client, open_worker
from .keys import KeyPool, KeyPoolStatistics, KeyStatistics
from .openai import OpenAIWorker
from .preset import PresetWorker

__all__ = [
    "AnthropicWorker",
    "AzureOpenAIWorker",
    "BalanceStatistics",
    "EchoWorker",
    "EventSink",
    "KeyPool",
    "KeyPoolStatistics",
    "KeyStatistics",
    "LoadBalancedWorker",
    "ModelWorker",
    "OpenAIWorker",
    "PresetWorker",
    "ProviderConfig",
    "ProvidersConfig",
    "Timeouts",
    "WorkerEmbedder",
    "WorkerLoad",
    "build_worker",
    "collect",
    "make_client",
    "open_worker",
]
