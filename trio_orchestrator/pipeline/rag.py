"""Retrieval: the first stage. The default retrieves nothing; it never fabricates context.

Two real retrievers come with the package: :class:`LexicalRetriever` (BM25 over words) and
:class:`EmbeddingRetriever` (cosine similarity of vectors from any
:class:`~trio_orchestrator.seams.Embedder`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs
import trio

from ..seams import Embedder
from ..types import Document, PromptRequest

__all__ = ["EmbeddingRetriever", "LexicalRetriever", "NoRetriever", "Retriever"]

_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Retriever(Protocol):
    """Finds documents relevant to a request.

    The retrieval stage awaits one retrieval at a time; a retriever that does network I/O
    should bound it with a timeout, or the stage's input channel fills and sheds.
    """

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        """Return the documents to put in the prompt, most relevant first."""


@attrs.define(eq=False)
class NoRetriever:
    """Retrieves nothing (the default)."""

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        """Return no documents."""
        return ()


def _terms(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


@attrs.define(eq=False)
class LexicalRetriever:
    """BM25 ranking over an in-memory corpus, queried with the last user message.

    Args:
        documents: the corpus.
        top_k: the most documents to return.
        min_score: documents scoring at or below this are not returned.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    documents: Sequence[Document]
    top_k: int = 3
    min_score: float = 0.0
    k1: float = 1.5
    b: float = 0.75
    _tf: list[Counter[str]] = attrs.field(init=False, factory=list)
    _lengths: list[int] = attrs.field(init=False, factory=list)
    _df: Counter[str] = attrs.field(init=False, factory=Counter)

    def __attrs_post_init__(self) -> None:
        for document in self.documents:
            terms = _terms(document.text)
            self._tf.append(Counter(terms))
            self._lengths.append(len(terms))
            self._df.update(set(terms))

    @classmethod
    def from_directory(
        cls, path: str | Path, patterns: Iterable[str] = ("*.md", "*.txt"), **kwargs: float
    ) -> LexicalRetriever:
        """Build a retriever over the paragraphs of the text files under ``path``.

        Each paragraph (text between blank lines) becomes a document ``"file.md#3"``.
        """
        root = Path(path)
        documents = []
        for pattern in patterns:
            for file in sorted(root.rglob(pattern)):
                paragraphs = re.split(r"\n\s*\n", file.read_text(encoding="utf-8"))
                for i, paragraph in enumerate(p.strip() for p in paragraphs):
                    if paragraph:
                        name = file.relative_to(root).as_posix()
                        documents.append(Document(f"{name}#{i}", paragraph))
        return cls(documents, **kwargs)  # type: ignore[arg-type]

    def rank(self, query: str) -> list[Document]:
        """Return the documents matching ``query``, best first, scored by BM25."""
        terms = set(_terms(query))
        n = len(self.documents)
        if not n or not terms:
            return []
        mean_length = sum(self._lengths) / n or 1.0
        scored = []
        for document, tf, length in zip(self.documents, self._tf, self._lengths, strict=True):
            score = 0.0
            for term in terms:
                freq = tf.get(term, 0)
                if freq:
                    idf = math.log(1 + (n - self._df[term] + 0.5) / (self._df[term] + 0.5))
                    norm = self.k1 * (1 - self.b + self.b * length / mean_length)
                    score += idf * freq * (self.k1 + 1) / (freq + norm)
            if score > self.min_score:
                scored.append(attrs.evolve(document, score=score))
        scored.sort(key=lambda d: -d.score)
        return scored[: self.top_k]

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        """Return the best documents for the request's last user message."""
        return self.rank(_last_user_text(request))


def _last_user_text(request: PromptRequest) -> str:
    return next((m.content for m in reversed(request.chat()) if m.role == "user"), "")


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


@attrs.define(eq=False)
class EmbeddingRetriever:
    """Dense retrieval: the documents whose vectors are closest (cosine) to the vector of
    the request's last user message.

    The corpus is embedded once, on the first retrieval (so building one costs nothing and
    needs no event loop); each retrieval then embeds only its query.

    Do not give it an embedder that sends its requests through the pipeline this retriever
    serves: the retrieval stage would wait on its own queue. Give it the provider, or the
    gateway's layered ``worker`` (``WorkerEmbedder(gateway.worker)``) — the embedding calls
    then go through the same breakers, retries and cache, outside the pipeline.

    Args:
        embedder: what turns texts into vectors.
        documents: the corpus.
        model: the embedding model.
        top_k: the most documents to return.
        min_score: documents whose cosine similarity is at or below this are not returned.
    """

    embedder: Embedder
    documents: Sequence[Document]
    model: str
    top_k: int = 3
    min_score: float = 0.0
    _vectors: list[list[float]] | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        """Return the best documents for the request's last user message.

        Raises:
            WorkerError: the embedder's failure (the pipeline fails the request with it).
        """
        query = _last_user_text(request)
        if not query or not self.documents:
            return []
        vectors = await self._corpus_vectors()
        (wanted,) = await self.embedder.embed([query], model=self.model)
        scored = [
            attrs.evolve(document, score=score)
            for document, vector in zip(self.documents, vectors, strict=True)
            if (score := _cosine(wanted, vector)) > self.min_score
        ]
        scored.sort(key=lambda d: -d.score)
        return scored[: self.top_k]

    async def _corpus_vectors(self) -> list[list[float]]:
        async with self._lock:  # concurrent first retrievals embed the corpus once
            if self._vectors is None:
                texts = [document.text for document in self.documents]
                self._vectors = await self.embedder.embed(texts, model=self.model)
        return self._vectors
