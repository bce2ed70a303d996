"""The pipeline: stages, channels, outcomes, dead letters, priority admission."""

from .assemble import Assembler, DefaultAssembler
from .core import PendingRequest, Pipeline, RequestStream, open_pipeline
from .dead_letters import DeadLetter, DeadLetterQueue, DeadLetterStatistics
from .hooks import PipelineHooks
from .job import FinishedRequest, Outcome
from .post import PostProcessor, StopSequences, TextFilter, TrimWhitespace
from .priority import PriorityAdmission, PriorityStatistics
from .rag import EmbeddingRetriever, LexicalRetriever, NoRetriever, Retriever
from .sinks import CallbackSink, MemorySink, OutputSink
from .statistics import PipelineStatistics, StageStatistics

__all__ = [
    "Assembler",
    "CallbackSink",
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLetterStatistics",
    "DefaultAssembler",
    "EmbeddingRetriever",
    "FinishedRequest",
    "LexicalRetriever",
    "MemorySink",
    "NoRetriever",
    "Outcome",
    "OutputSink",
    "PendingRequest",
    "Pipeline",
    "PipelineHooks",
    "PipelineStatistics",
    "PostProcessor",
    "PriorityAdmission",
    "PriorityStatistics",
    "RequestStream",
    "Retriever",
    "StageStatistics",
    "StopSequences",
    "TextFilter",
    "TrimWhitespace",
    "open_pipeline",
]
