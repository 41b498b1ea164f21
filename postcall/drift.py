"""Drift indicators: what the model was asked to score on one tenant's day, in a few numbers.

Scripts, offers and competitors change faster than the model. Between trainings these numbers say when the
words reaching the model (or its answers) have moved away from what it usually sees and from what it was
trained on; postcall/drift_rule.py decides when a move is a drift, postcall/drift_job.py runs it nightly.

The indicators of a set of scored utterances (a tenant's day, or the training text for the baseline):
- ``token_length``: mean tokens per utterance, counted with the served model's tokenizer
  (tokenizer.json beside the model, without [CLS] and [SEP]): what the model actually reads. New jargon
  and acronyms split into many word pieces, so this moves with them;
- ``stop_word_ratio``: the share of words that are English function words (``STOP_WORDS``, a small
  constant list: articles, pronouns, auxiliaries, prepositions, conjunctions). A constant rather than a
  list derived from the training text, whose most frequent words include "oh", "hey" and its characters'
  names (MELD is a TV series): a sales call must not count as drifting for saying no "hey";
- ``oov_rate``: the share of words that are not in the training text's vocabulary (the baseline's
  ``vocabulary``: its words seen at least twice);
- ``negative_share``, ``neutral_share``, ``positive_share``: the label mix of the scores;
- ``mean_confidence``: the mean of the top class's probability.

A word is a run of letters and digits with at least one letter, lower-cased (apostrophes kept: "don't");
numbers alone are not words (prices and dates are not vocabulary) and the chopper's PII masks ("[PHONE]")
are not the speaker's words, so both are left out. Utterances stored without their text (a tenant with
``store_transcripts = false``) count in the label mix and the confidence only.

The baseline (``DriftBaseline``) is the same indicators on the training text named by the served model's
card, with that text's vocabulary, written by ``callsense drift baseline`` (tools/drift_cli.py) into
postcall/drift_baseline.json.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASELINE_PATH = Path(__file__).with_name("drift_baseline.json")

TEXT_INDICATORS = ("token_length", "stop_word_ratio", "oov_rate")
"""Indicators of the words: computed over the utterances that have their text."""
SCORE_INDICATORS = ("negative_share", "neutral_share", "positive_share", "mean_confidence")
"""Indicators of the scores: computed over every scored utterance."""
INDICATORS = TEXT_INDICATORS + SCORE_INDICATORS

# English function words (and their contracted forms): what a sentence is made of whatever it is about.
# Small on purpose; see the module docstring for why not the training text's most frequent words.
_STOP_WORDS = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves i'm i've i'll i'd you're you've you'll you'd he's she's it's we're we've
    we'll we'd they're they've they'll they'd that's there's here's what's who's let's isn't aren't wasn't
    weren't hasn't haven't hadn't doesn't don't didn't won't wouldn't can't cannot couldn't shouldn't
"""
STOP_WORDS = frozenset(_STOP_WORDS.split())

_WORD = re.compile(r"[a-z0-9]*[a-z][a-z0-9]*(?:'[a-z]+)*")
_PII_MASK = re.compile(r"\[[A-Z_]+\]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def words(text: str) -> list[str]:
    """The words of ``text`` as the indicators count them (see the module docstring)."""
    return _WORD.findall(_PII_MASK.sub(" ", text).translate(_APOSTROPHES).lower())


@dataclass(frozen=True)
class DriftIndicators:
    """The indicators of one set of scored utterances; None where there was nothing to measure."""

    utterances: int
    """Scored utterances (the denominator of the label mix and the confidence)."""
    text_utterances: int
    """Of those, the ones whose words were read (stored with text, and sampled on a very large day)."""
    token_length: float | None = None
    stop_word_ratio: float | None = None
    oov_rate: float | None = None
    negative_share: float | None = None
    neutral_share: float | None = None
    positive_share: float | None = None
    mean_confidence: float | None = None

    def value(self, name: str) -> float | None:
        if name not in INDICATORS:
            raise KeyError(f"{name!r} is not a drift indicator ({', '.join(INDICATORS)})")
        value: float | None = getattr(self, name)
        return value

    def support(self, name: str) -> int:
        """How many utterances the indicator ``name`` was measured on."""
        return self.text_utterances if name in TEXT_INDICATORS else self.utterances

    def as_dict(self) -> dict[str, float | None]:
        return {name: self.value(name) for name in INDICATORS}


@dataclass
class TextTally:
    """Running sums over utterances' words and tokens; O(1) memory, linear in the text."""

    utterances: int = 0
    tokens: int = 0
    words: int = 0
    stop_words: int = 0
    oov_words: int = 0

    def add(self, text: str, tokens: int, vocabulary: frozenset[str]) -> None:
        """One utterance's text, and its length in the model's tokens."""
        found = words(text)
        self.utterances += 1
        self.tokens += tokens
        self.words += len(found)
        self.stop_words += sum(1 for w in found if w in STOP_WORDS)
        self.oov_words += sum(1 for w in found if w not in vocabulary)

    def indicators(self) -> dict[str, float | None]:
        """token_length, stop_word_ratio and oov_rate (None where there was no text, or no word)."""
        return {
            "token_length": self.tokens / self.utterances if self.utterances else None,
            "stop_word_ratio": self.stop_words / self.words if self.words else None,
            "oov_rate": self.oov_words / self.words if self.words else None,
        }


@dataclass
class ScoreTally:
    """Running sums over utterances' scores: the label mix and the mean confidence."""

    utterances: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    confidence_sum: float = 0.0

    def add(self, label: str, p_negative: float, p_neutral: float, p_positive: float) -> None:
        self.utterances += 1
        self.labels[label] += 1
        self.confidence_sum += max(p_negative, p_neutral, p_positive)

    def indicators(self) -> dict[str, float | None]:
        n = self.utterances
        return {
            "negative_share": self.labels["negative"] / n if n else None,
            "neutral_share": self.labels["neutral"] / n if n else None,
            "positive_share": self.labels["positive"] / n if n else None,
            "mean_confidence": self.confidence_sum / n if n else None,
        }


def text_indicators(
    texts: Iterable[str], count_tokens: Callable[[str], int], vocabulary: frozenset[str]
) -> TextTally:
    """The words' indicators of ``texts`` (empty texts are skipped: an utterance stored without text)."""
    tally = TextTally()
    for text in texts:
        if text.strip():
            tally.add(text, count_tokens(text), vocabulary)
    return tally


def combine(utterances: int, text: TextTally, scores: Mapping[str, float | None]) -> DriftIndicators:
    """One day's indicators from its text tally and its score indicators (computed in SQL)."""
    values = {**text.indicators(), **{name: scores.get(name) for name in SCORE_INDICATORS}}
    return DriftIndicators(utterances=utterances, text_utterances=text.utterances, **values)


# --- the training baseline ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftBaseline:
    """The indicators of the training text and its vocabulary, as ``callsense drift baseline`` wrote them."""

    model_version: str
    """The version of the model whose card named the training text (and whose scores give the label mix)."""
    sources: tuple[str, ...]
    """The training text: corpora as ``training.data.load_source`` names them ("meld:train")."""
    lines: int
    indicators: DriftIndicators
    vocabulary: frozenset[str]
    min_count: int = 2
    """A word of the training text is in the vocabulary when seen at least this often."""
    command: str = ""
    """The command that wrote the file (it is never edited by hand)."""

    def value(self, name: str) -> float | None:
        return self.indicators.value(name)

    def to_json(self, vocabulary_order: Iterable[str] | None = None) -> dict[str, Any]:
        """The file's content; the vocabulary in ``vocabulary_order`` (most frequent first), else sorted."""
        ordered = list(vocabulary_order) if vocabulary_order is not None else sorted(self.vocabulary)
        return {
            "model_version": self.model_version,
            "sources": list(self.sources),
            "lines": self.lines,
            "command": self.command,
            "stop_words": "the constant postcall.drift.STOP_WORDS",
            "token_length_unit": "tokens of the served model's tokenizer per utterance, without [CLS]/[SEP]",
            "indicators": {
                "utterances": self.indicators.utterances,
                "text_utterances": self.indicators.text_utterances,
                **self.indicators.as_dict(),
            },
            "vocabulary_min_count": self.min_count,
            "vocabulary": ordered,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftBaseline:
        values = dict(data["indicators"])
        return cls(
            model_version=str(data["model_version"]),
            sources=tuple(str(s) for s in data["sources"]),
            lines=int(data["lines"]),
            indicators=DriftIndicators(
                utterances=int(values.pop("utterances")),
                text_utterances=int(values.pop("text_utterances")),
                **{name: None if values.get(name) is None else float(values[name]) for name in INDICATORS},
            ),
            vocabulary=frozenset(str(w) for w in data["vocabulary"]),
            min_count=int(data.get("vocabulary_min_count", 2)),
            command=str(data.get("command", "")),
        )


def load_baseline(path: Path = DEFAULT_BASELINE_PATH) -> DriftBaseline:
    """The baseline file (blocking: read it once, at start-up). ValueError naming the file when unusable."""
    try:
        return DriftBaseline.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"drift baseline {path}: unusable ({exc}); write it with `callsense drift baseline`"
        ) from None


def vocabulary_of(texts: Iterable[str], min_count: int = 2, top_n: int = 20_000) -> list[str]:
    """The words of ``texts`` seen at least ``min_count`` times, most frequent first (ties by the word),
    at most ``top_n`` of them: the baseline's vocabulary."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return ranked[:top_n]
