"""The drift check's training baseline from a list of texts: vocabulary and indicators (postcall/drift.py).

``callsense drift baseline`` (tools/drift_cli.py) feeds it the model's training text; a test feeds it a few
lines. The indicators are those the nightly job computes for a tenant's day, over the training text as one
day: what "usual" meant for the model when it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

from callsense.tokenization import SentimentTokenizer
from postcall.drift import DriftBaseline, ScoreTally, combine, text_indicators, vocabulary_of
from postcall.drift_job import special_tokens_free
from scorer_service.inference import SentimentInput, SentimentModel


def compute_baseline(
    texts: Sequence[str],
    *,
    sources: Sequence[str],
    model_version: str,
    tokenizer: SentimentTokenizer,
    scorer: SentimentModel | None,
    min_count: int = 2,
    top_n: int = 20_000,
    command: str = "",
) -> tuple[DriftBaseline, list[str]]:
    """The baseline of ``texts`` and its vocabulary, most frequent word first.

    The out-of-vocabulary rate is the text's own against that vocabulary (the share of its words seen
    fewer than ``min_count`` times, or beyond ``top_n``). The label mix and confidence are ``scorer``'s
    (None: left out); a text the model refuses (over 128 tokens) counts in the words' indicators only.
    """
    ranked = vocabulary_of(texts, min_count=min_count, top_n=top_n)
    vocabulary = frozenset(ranked)
    text = text_indicators(texts, special_tokens_free(tokenizer), vocabulary)
    scores = ScoreTally()
    if scorer is not None:
        for prediction in scorer.predict([SentimentInput(t) for t in texts if t.strip()]):
            if isinstance(prediction, Exception):
                continue
            p = prediction
            scores.add(p.label, p.p_negative, p.p_neutral, p.p_positive)
    baseline = DriftBaseline(
        model_version=model_version,
        sources=tuple(sources),
        lines=len(texts),
        indicators=combine(scores.utterances, text, scores.indicators()),
        vocabulary=vocabulary,
        min_count=min_count,
        command=command,
    )
    return baseline, ranked
