"""Workers: the protocol, and the built-in providers."""

from .base import EventSink, ModelWorker, collect
from .echo import EchoWorker

__all__ = ["EchoWorker", "EventSink", "ModelWorker", "collect"]
