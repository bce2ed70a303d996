"""Post-processing filters: a streamed answer and a whole answer are the same text."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import GenerationParams, PromptRequest, StopSequences, TrimWhitespace
from trio_orchestrator.pipeline.post import PostProcessor, open_filters

alphabet = st.sampled_from("ab \n")
texts = st.text(alphabet, max_size=40)


def run(processors: list[PostProcessor], request: PromptRequest, chunks: list[str]) -> str:
    """Feed ``chunks`` through the processors' filters as a stream would, then finish."""
    f = open_filters(processors, request)
    if f is None:
        return "".join(chunks)
    out = [f.feed(chunk) for chunk in chunks]
    out.append(f.finish())
    return "".join(out)


def split(text: str, cuts: list[int]) -> list[str]:
    """Cut ``text`` at the given offsets."""
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def reference_stop(text: str, stops: list[str]) -> str:
    """The text before the stop sequence that completes first (ties: the earliest start)."""
    hits = [(i + len(s), i) for s in stops if s and (i := text.find(s)) != -1]
    return text[: min(hits)[1]] if hits else text


@given(
    texts, st.lists(st.text("ab", min_size=1, max_size=3), max_size=3), st.lists(st.integers(0, 50))
)
def test_stop_sequences_cut_at_the_first_stop_however_the_text_is_chunked(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    """For any chunking, streamed stop filtering cuts where the whole text is cut."""
    request = PromptRequest(input="q", params=GenerationParams(stop=tuple(stops)))
    assert run([StopSequences()], request, split(text, cuts)) == reference_stop(text, stops)


@given(texts, st.lists(st.integers(0, 50)))
def test_trim_strips_both_ends_however_the_text_is_chunked(text: str, cuts: list[int]) -> None:
    """For any chunking, streamed trimming equals str.strip() of the whole answer."""
    request = PromptRequest(input="q")
    assert run([TrimWhitespace()], request, split(text, cuts)) == text.strip()


@given(
    texts, st.lists(st.text("ab", min_size=1, max_size=3), max_size=2), st.lists(st.integers(0, 50))
)
def test_chained_filters_compose_like_the_whole_answer(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    """Stop then trim, streamed in any chunks, equals trimming the text cut at the stop."""
    request = PromptRequest(input="q", params=GenerationParams(stop=tuple(stops)))
    streamed = run([StopSequences(), TrimWhitespace()], request, split(text, cuts))
    assert streamed == reference_stop(text, stops).strip()


def test_no_stop_sequences_means_no_filter() -> None:
    """A request without stop sequences pays for no filter at all."""
    assert StopSequences().open(PromptRequest(input="q")) is None


def test_a_stop_filter_reports_stopped_once_it_cut() -> None:
    """A stop filter says it has stopped, so the pipeline can stop the worker."""
    f = StopSequences(["END"]).open(PromptRequest(input="q"))
    assert f is not None
    assert f.feed("abc E") == "abc "
    assert not f.stopped
    assert f.feed("ND and more") == ""
    assert f.stopped


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.


def test_text_that_cannot_start_a_stop_is_released_at_once() -> None:
    """A stop filter holds back only a tail that could begin a stop sequence, nothing more."""
    f = StopSequences(["END"]).open(PromptRequest(input="q"))
    assert f is not None
    assert f.feed("hello") == "hello"
    assert f.feed(" EN") == " "
    assert f.finish() == "EN"


def test_the_stop_that_completes_first_wins_over_a_longer_earlier_one() -> None:
    """With stops `abcdef` and `cd`, the text is cut before `cd`, which completes first."""
    request = PromptRequest(input="q", params=GenerationParams(stop=("abcdef", "cd")))
    assert run([StopSequences()], request, ["xabcdefy"]) == "xab"


def test_only_empty_stop_sequences_mean_no_filter() -> None:
    """Empty stop strings stop nothing, so they open no filter."""
    request = PromptRequest(input="q", params=GenerationParams(stop=("",)))
    assert StopSequences().open(request) is None


def test_a_chain_passes_what_one_filter_held_to_the_next_at_the_end() -> None:
    """At finish, the text a stop filter held back still goes through the trim after it."""
    request = PromptRequest(input="q", params=GenerationParams(stop=("END",)))
    assert run([StopSequences(), TrimWhitespace()], request, ["  hi EN"]) == "hi EN"
    assert run([StopSequences(), TrimWhitespace()], request, ["  hi EN  "]) == "hi EN"
