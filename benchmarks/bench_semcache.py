"""The semantic cache: index scan time, the latency it adds to a miss, and its hit rate.

Three measurements, all in one process, no network:

1. **Scan**: :class:`SemanticIndex.search` over N stored entries of one scope (the worst case:
   every entry in the caller's scope), for each N in ``--entries`` and each dimension in
   ``--dims``; unit vectors of random floats. Reports the median and p99 of single lookups.
2. **Added latency on a miss**: a request through ``SemanticCacheLayer`` around an
   ``EchoWorker``, the index holding N entries of the same scope and the question matching
   none, against the bare worker. The embedder here is an in-process hashed bag of words (a
   few microseconds); a real embedding model adds its own round trip (tens of milliseconds
   for a hosted API) on top of the scan, which is why the cache is opt-in.
3. **Hit rate on a scripted workload**: questions "the <subject> of <place>" (5 subjects x 8
   places: any two share words, the near misses to refuse), each asked in 4 phrasings, in a
   seeded random order; reports hits, misses and false hits (a hit answered with another
   question's answer) at the default threshold.

    python benchmarks/bench_semcache.py [--quick] [--entries 1000,10000] [--dims 256,1536]

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import re
import statistics
import time
from collections.abc import Sequence

import attrs
import trio

from trio_orchestrator import EchoWorker, GenerationParams, PromptRequest, __version__
from trio_orchestrator.events import StreamEvent, TextDelta
from trio_orchestrator.resilience.config import SemanticCacheConfig
from trio_orchestrator.resilience.semantic_cache import (
    SemanticCacheLayer,
    SemanticIndex,
    normalise,
    scope_of,
)
from trio_orchestrator.workers import ModelWorker

_FILLER = frozenset(
    {"a", "an", "the", "of", "in", "on", "to", "for", "is", "are", "what", "s", "how", "do"}
    | {"does", "i", "me", "my", "can", "could", "you", "please", "tell", "it"}
)


def bag_of_words(text: str, dim: int) -> list[float]:
    """A hashed bag of content words (the toy embedder of the tests)."""
    vector = [0.0] * dim
    for word in re.findall(r"[a-z]+", text.lower()):
        if word not in _FILLER:
            digest = hashlib.sha256(word.encode()).digest()
            vector[int.from_bytes(digest[:4], "big") % dim] += 1.0 if digest[4] & 1 else -1.0
    return vector


@attrs.define
class BagOfWords:
    """An in-process :class:`~trio_orchestrator.seams.Embedder`."""

    dim: int = 256

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """One hashed bag-of-words vector per input."""
        await trio.lowlevel.checkpoint()
        return [bag_of_words(text, self.dim) for text in inputs]


def _random_unit(rng: random.Random, dim: int) -> tuple[float, ...]:
    return normalise([rng.gauss(0.0, 1.0) for _ in range(dim)])


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_us": statistics.median(ordered) * 1e6, "p99_us": p99 * 1e6}


def _near(rng: random.Random, base: tuple[float, ...], cos: float) -> tuple[float, ...]:
    """A unit vector at cosine ``cos`` (about) from the unit vector ``base``."""
    noise = _random_unit(rng, len(base))
    side = math.sqrt(max(0.0, 1 - cos * cos))
    return normalise([cos * b + side * n for b, n in zip(base, noise, strict=True)])


def bench_scan(
    entries: int, dim: int, lookups: int, seed: int, kernel: str = "python"
) -> dict[str, float]:
    """Time single searches over ``entries`` stored vectors of one scope with ``kernel``:
    exact flat scan, and at threshold 0.95 (the prefilter, for ``python``) against unrelated
    vectors (random) and against a crowded scope (every entry at cosine 0.85 from the
    query: real embeddings of questions on one topic)."""
    rng = random.Random(seed)
    query = _random_unit(rng, dim)
    result: dict[str, float] = {}
    for kind in ("random", "crowded"):
        index = SemanticIndex(max_entries=entries, ttl=math.inf, kernel=kernel)
        for _ in range(entries):
            vector = _random_unit(rng, dim) if kind == "random" else _near(rng, query, 0.85)
            index.put("scope", vector, (), 0.0)
        modes = (
            (("exact", -1.0), ("prefilter", 0.95)) if kind == "random" else (("prefilter", 0.95),)
        )
        for mode, threshold in modes:
            samples = []
            compared = index.compared
            for _ in range(lookups):
                started = time.perf_counter()
                index.search("scope", query, 1.0, threshold=threshold)
                samples.append(time.perf_counter() - started)
            q = _quantiles(samples)
            name = f"{mode}_{kind}"
            result[f"{name}_median_us"] = q["median_us"]
            result[f"{name}_p99_us"] = q["p99_us"]
            result[f"{name}_compared"] = (index.compared - compared) / lookups
    return result


def bench_usearch(entries: int, dim: int, lookups: int, seed: int) -> dict[str, float] | None:
    """usearch's HNSW index (cosine, f32) on the crowded scope of :func:`bench_scan`: the
    search and one insertion, or None when usearch is not installed."""
    from trio_orchestrator.resilience.semantic_cache import numpy_or_none

    numpy = numpy_or_none()
    try:
        from usearch.index import Index  # type: ignore[import-not-found]
    except ImportError:
        return None
    if numpy is None:
        return None
    rng = random.Random(seed)
    query = _random_unit(rng, dim)
    index = Index(ndim=dim, metric="cos", dtype="f32")
    inserts = []
    for key in range(entries):
        vector = numpy.asarray(_near(rng, query, 0.85), dtype=numpy.float32)
        started = time.perf_counter()
        index.add(key, vector)
        inserts.append(time.perf_counter() - started)
    samples = []
    for _ in range(lookups):
        started = time.perf_counter()
        index.search(numpy.asarray(query, dtype=numpy.float32), 1)
        samples.append(time.perf_counter() - started)
    return {
        "search_median_us": _quantiles(samples)["median_us"],
        "insert_median_us": statistics.median(inserts) * 1e6,
    }


def index_comparison(
    entries: Sequence[int], dims: Sequence[int], lookups: int, seed: int
) -> dict[str, dict[str, float | None]]:
    """Median lookup time on a crowded scope (the worst case) per kernel, per size."""
    from trio_orchestrator.resilience.semantic_cache import numpy_or_none

    table: dict[str, dict[str, float | None]] = {}
    for dim in dims:
        for n in entries:
            row: dict[str, float | None] = {}
            # Pure Python on a crowded scope costs ~25 ms per 1 000 x 384: skip the hours.
            slow = n * dim > 10_000 * 384
            row["python_us"] = (
                None
                if slow
                else bench_scan(n, dim, max(3, lookups // 10), seed)["prefilter_crowded_median_us"]
            )
            row["numpy_us"] = (
                bench_scan(n, dim, lookups, seed, "numpy")["prefilter_crowded_median_us"]
                if numpy_or_none() is not None
                else None
            )
            hnsw = bench_usearch(n, dim, lookups, seed)
            row["usearch_us"] = None if hnsw is None else hnsw["search_median_us"]
            row["usearch_insert_us"] = None if hnsw is None else hnsw["insert_median_us"]
            table[f"{n}x{dim}"] = row
            shown = "  ".join(
                f"{k.removesuffix('_us')} " + ("-" if v is None else f"{v:,.0f} µs")
                for k, v in row.items()
            )
            print(f"index, crowded scope, {n:>6} x dim {dim:>5}: {shown}", flush=True)
    return table


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))


def _request(text: str) -> PromptRequest:
    return PromptRequest(input=text, params=GenerationParams(model="echo", temperature=0))


async def _answer(worker: ModelWorker, request: PromptRequest) -> None:
    async def drop(_event: StreamEvent) -> None:
        pass

    await worker.generate(request, drop)


async def bench_miss(entries: int, dim: int, requests: int, seed: int) -> dict[str, float]:
    """Per-request time of a miss through the layer (index holding ``entries``) vs. bare."""
    rng = random.Random(seed)
    config = SemanticCacheConfig(
        enabled=True, embedding_model="bow", max_entries=entries + requests, ttl=math.inf
    )
    layer = SemanticCacheLayer(EchoWorker(), config, BagOfWords(dim))
    scope = scope_of(_request("x"), per_key=True)
    stored = (TextDelta("stored"),)
    for _ in range(entries):
        layer._index.put(scope, _random_unit(rng, dim), stored, 0.0)
    bare = EchoWorker()
    timings: dict[str, list[float]] = {"bare": [], "semantic": []}
    for _ in range(requests):
        # Words of letters only, new for each request: no two requests are close.
        request = _request(" ".join(_word(rng) for _ in range(6)))
        for name, worker in (("bare", bare), ("semantic", layer)):
            started = time.perf_counter()
            await _answer(worker, request)
            timings[name].append(time.perf_counter() - started)
    bare_q, semantic_q = _quantiles(timings["bare"]), _quantiles(timings["semantic"])
    stats = layer.statistics()
    assert stats.hits == 0, "the miss benchmark hit"
    return {
        "bare_median_us": bare_q["median_us"],
        "semantic_median_us": semantic_q["median_us"],
        "semantic_p99_us": semantic_q["p99_us"],
        "added_median_us": semantic_q["median_us"] - bare_q["median_us"],
    }


SUBJECTS = ["capital", "population", "currency", "largest city", "national dish"]
PLACES = ["France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "Chile", "Egypt"]
PHRASINGS = [
    "What is the {s} of {p}?",
    "Tell me the {s} of {p}, please.",
    "What's the {s} of {p}?",
    "{p}: what is the {s}?",
]


async def bench_hit_rate(topics: int, phrasings: int, seed: int) -> dict[str, float]:
    """Hits, misses and false hits on a seeded mix of paraphrases and near questions."""
    rng = random.Random(seed)
    pairs = [(s, p) for s in SUBJECTS for p in PLACES][:topics]
    asks = [(s, p, f) for s, p in pairs for f in PHRASINGS[:phrasings]]
    rng.shuffle(asks)
    config = SemanticCacheConfig(enabled=True, embedding_model="bow", max_entries=10_000)
    layer = SemanticCacheLayer(EchoWorker(), config, BagOfWords(256))
    first_phrasing: dict[tuple[str, str], str] = {}
    false_hits = 0
    for subject, place, phrasing in asks:
        question = phrasing.format(s=subject, p=place)
        texts: list[str] = []

        async def keep(event: StreamEvent, texts: list[str] = texts) -> None:
            if isinstance(event, TextDelta):
                texts.append(event.text)

        before = layer.statistics().hits
        await layer.generate(_request(question), keep)
        answer = "".join(texts)
        # The echo answer is the question first asked: another topic's is a false hit.
        wrong = first_phrasing.get((subject, place)) is None or place not in answer
        if layer.statistics().hits > before and wrong:
            false_hits += 1
        first_phrasing.setdefault((subject, place), question)
    stats = layer.statistics()
    return {
        "requests": len(asks),
        "distinct_questions": len(pairs),
        "hits": stats.hits,
        "misses": stats.misses,
        "false_hits": false_hits,
        "hit_rate": stats.hits / max(1, stats.lookups),
        "best_possible_hit_rate": (len(asks) - len(pairs)) / max(1, len(asks)),
    }


def main() -> None:
    """Run the benchmarks and print their results, then one line of JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--entries", default="1000,10000", help="index sizes, comma-separated")
    parser.add_argument("--dims", default="256,768,1536", help="dimensions, comma-separated")
    parser.add_argument("--lookups", type=int, default=50, help="searches per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--index-entries", default="1000,10000,50000", help="index comparison: entries a scope"
    )
    parser.add_argument("--index-dims", default="384,1536", help="index comparison: dimensions")
    args = parser.parse_args()
    entries = [int(n) for n in args.entries.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    lookups, requests = args.lookups, 50
    index_entries = [int(n) for n in args.index_entries.split(",")]
    index_dims = [int(d) for d in args.index_dims.split(",")]
    if args.quick:
        entries, dims, lookups, requests = [100, 1000], [256], 10, 10
        index_entries, index_dims = [100, 1000], [384]
    print(
        f"trio_orchestrator {__version__}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}; pure-Python flat scan "
        f"(sum(map(operator.mul, ...)) over tuples of floats); seed {args.seed}"
    )
    scan = {}
    for dim in dims:
        for n in entries:
            r = bench_scan(n, dim, lookups, args.seed)
            scan[f"{n}x{dim}"] = r
            print(
                f"scan {n:>6} x dim {dim:>5}: exact {r['exact_random_median_us']:>9.0f} µs"
                f" | prefilter, unrelated {r['prefilter_random_median_us']:>7.0f} µs "
                f"({r['prefilter_random_compared']:.0f} compared)"
                f" | prefilter, crowded {r['prefilter_crowded_median_us']:>9.0f} µs "
                f"({r['prefilter_crowded_compared']:.0f} compared)  [medians]"
            )
    miss = {}
    for n in entries:
        result = trio.run(bench_miss, n, dims[0], requests, args.seed)
        miss[str(n)] = result
        print(
            f"miss with {n:>6} entries (dim {dims[0]}): bare {result['bare_median_us']:.0f} µs,"
            f" semantic {result['semantic_median_us']:.0f} µs (added "
            f"{result['added_median_us']:.0f} µs; p99 {result['semantic_p99_us']:.0f} µs)"
        )
    topics = 10 if args.quick else len(SUBJECTS) * len(PLACES)
    hit_rate = trio.run(bench_hit_rate, topics, len(PHRASINGS), args.seed)
    print(
        f"workload: {hit_rate['requests']} requests, {hit_rate['distinct_questions']} distinct "
        f"questions x {len(PHRASINGS)} phrasings, threshold 0.95: hit rate "
        f"{hit_rate['hit_rate']:.2f} (best possible {hit_rate['best_possible_hit_rate']:.2f}),"
        f" false hits {hit_rate['false_hits']}"
    )
    index = index_comparison(index_entries, index_dims, lookups, args.seed)
    print(
        json.dumps(
            {
                "quick": args.quick,
                "scan": scan,
                "miss": miss,
                "workload": hit_rate,
                "index_crowded_median_us": index,
            }
        )
    )


if __name__ == "__main__":
    main()
