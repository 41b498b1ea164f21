"""Objection tags per call segment: what the customer pushed back on, and where.

Five tags (``TAGS``): "pricing pushback", "timeline concern", "competitor mention", "authority", "no need".
Only the customer's side is tagged (``customer`` and, on a mono line, ``mixed`` segments): an agent saying
"our price is 40k" puts pricing on the table but is no objection.

- ``LocalObjectionTagger``: no network, always there. Two signals per segment:
  1. Phrase rules (``OBJECTION_RULES``, plus the live coach's competitor rules): few, narrow, precise.
  2. Nearest labelled examples: the segment's MiniLM embedding against the hand-written sentences of
     ``objection_examples.json`` (five tags plus "none", ordinary sales talk). A tag's similarity is the
     mean of its ``k`` best example similarities; it is given when that beats ``min_similarity`` and the
     "none" class by ``margin``. The bar goes up for a clearly positive segment (objections are voiced with
     non-positive sentiment: "the price is fine" resembles "the price is too high" in embedding space) and
     down a little when the live coach's topic keywords for that tag occur in the segment.
  A segment can carry several tags ("HubSpot is half the price" is a competitor mention and pushback).
- ``LlmObjectionTagger``: asks an OpenAI-compatible chat-completions endpoint for the tags as JSON; any
  failure or malformed reply falls back to the local tagger (logged). Optional, never required.
- ``tagger_from_env``: the LLM tagger when ``CALLSENSE_OBJECTIONS_LLM_URL`` is set, else the local one.

Taggers block (encoder forward pass, HTTP): the caller runs ``tag`` in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from callsense.domain import UtteranceScore
from callsense.report import TAGS, ObjectionName, ObjectionTag
from callsense.tenants import DEFAULT_SETTINGS, BadgeSettings
from callsense.topics import Topic, topic_hits
from postcall.encoder import Matrix, MiniLMEncoder, shared_encoder

log = logging.getLogger(__name__)

NONE_CLASS = "none"
# The live coach's topic for each tag: its keywords support a tag, and the summary names spikes by it.
TAG_TOPICS: Mapping[str, Topic] = {
    "pricing pushback": "pricing",
    "timeline concern": "timeline",
    "competitor mention": "competitor",
    "authority": "authority",
    "no need": "need",
}
TAGGED_CHANNELS = frozenset({"customer", "mixed"})
EXAMPLES_PATH = Path(__file__).with_name("objection_examples.json")

ENV_LLM_URL = "CALLSENSE_OBJECTIONS_LLM_URL"
ENV_LLM_MODEL = "CALLSENSE_OBJECTIONS_LLM_MODEL"
ENV_LLM_API_KEY = "CALLSENSE_OBJECTIONS_LLM_API_KEY"
ENV_LLM_TIMEOUT = "CALLSENSE_OBJECTIONS_LLM_TIMEOUT_S"


class ObjectionTagger(Protocol):
    def tag(self, events: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        """The call's objection tags in call-time order. Blocking: run it in a thread."""
        ...


def customer_segments(events: Sequence[UtteranceScore]) -> list[UtteranceScore]:
    """The segments that can carry objections: customer side, non-empty, each utterance once, in order."""
    unique = {e.utterance_id: e for e in events if e.channel in TAGGED_CHANNELS and e.text.strip()}
    return sorted(unique.values(), key=lambda e: (e.start_ms, e.utterance_id))


def _sorted_tags(tags: list[ObjectionTag]) -> list[ObjectionTag]:
    return sorted(tags, key=lambda t: (t.start_ms, t.utterance_id, TAGS.index(t.tag)))


# ------------------------------------------------------------------------------------------------ rules

# Objection phrases, matched on whole words of the lower-cased text. Narrow on purpose: a rule that fires
# is taken as is, so each phrase must be an objection on its own ("price" alone is a topic, "too
# expensive" is pushback). The model catches the many other ways of saying it.
OBJECTION_RULES: Mapping[ObjectionName, tuple[str, ...]] = {
    "pricing pushback": (
        r"too (?:expensive|pricey|steep|costly)",
        r"(?:price|pricing|cost|quote|fee)s? (?:is|are|was|seems|looks) (?:\w+ )?(?:too )?(?:high|steep)",
        r"over ?priced",
        r"(?:can't|cannot|can not|couldn't) afford",
        r"out of (?:our|my) (?:budget|price range)",
        r"over (?:our|my|the) budget",
        r"(?:don't|do not) have the (?:money|budget)",
        r"more than (?:we|i) (?:budgeted|planned|expected|can spend|want to spend)",
    ),
    "timeline concern": (
        r"(?:timing|time) (?:isn't|is not|just isn't) (?:right|good|ideal)",
        r"bad timing",
        r"not (?:a good|the right) time",
        r"too soon",
        r"(?:have|has) to wait",
        r"(?:circle|come|check) back (?:in|after|next|later)",
        r"no bandwidth",
        r"put (?:it|this|that) on hold",
        r"not (?:right )?now",
    ),
    "authority": (
        r"(?:run|bring) (?:it|this|that) (?:by|past) (?:my|our|the)",
        r"check with (?:my|our|the)",
        r"not (?:really )?(?:my|the) (?:decision|call) to make",
        r"not (?:really )?my (?:decision|call)",
        r"(?:not|isn't|n't) the one who (?:signs|decides|approves)",
        r"(?:my|our|the) (?:boss|manager|director|cfo|ceo|vp|owner|board|founder)s? "
        r"(?:has|have|needs?|would need|will need) to (?:approve|sign|agree|decide)",
        r"(?:need|get|have) (?:the )?(?:sign[- ]?off|approval|buy-in) (?:from|of)",
    ),
    "no need": (
        r"(?:don't|do not) (?:really )?need (?:it|this|that|one|another|anything)",
        r"no need for (?:it|this|that)",
        r"not (?:really )?interested",
        r"not a priority",
        r"works? (?:just )?fine (?:for us|as it is)",
        r"happy with (?:what we have|how things are|our current)",
        r"(?:don't|do not|can't|cannot) see the (?:value|point|need)",
        r"already have (?:something|a tool|a solution|one)",
    ),
}


@lru_cache(maxsize=1)
def _rule_patterns() -> tuple[tuple[ObjectionName, re.Pattern[str]], ...]:
    return tuple(
        (tag, re.compile(r"\b(?:" + "|".join(alternatives) + r")\b"))
        for tag, alternatives in OBJECTION_RULES.items()
    )


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").replace("\u2018", "'").split())


def rule_tags(text: str, settings: BadgeSettings = DEFAULT_SETTINGS) -> set[ObjectionName]:
    """The tags whose phrase rules match ``text``. Competitor mentions reuse the live coach's competitor
    rules (tenant's competitor names, "another vendor", "alternatives"...): naming a rival is the tag."""
    normalised = _normalise(text)
    found = {tag for tag, pattern in _rule_patterns() if pattern.search(normalised)}
    if "competitor" in topic_hits(text, settings):
        found.add("competitor mention")
    return found


# ------------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class TaggerSettings:
    """Thresholds of the local tagger. Similarities are MiniLM cosines; scores the sentiment in [0, 1].

    Chosen by a grid search with leave-one-out over objection_examples.json, then checked on the held-out
    sentences of tests/postcall/test_objections.py (macro precision 0.97, recall 0.77 on 80 sentences),
    which must keep passing when these change."""

    # A tag's similarity: the mean of its k nearest examples (one lucky neighbour is not enough).
    k: int = 5
    # Below this the segment resembles no example well enough (unrelated sentences score about 0-0.25).
    min_similarity: float = 0.30
    # ...and it must beat ordinary sales talk ("none") by this much.
    margin: float = 0.04
    # Objections sound negative or flat. A segment scored above `positive_score` (the badge's green line)
    # needs up to `positive_extra` more similarity, scaled by how far above it is.
    positive_score: float = 0.65
    positive_extra: float = 0.20
    # A rule fires on a clearly positive segment only for competitor mentions ("we love HubSpot" still
    # names a rival); elsewhere positivity means the phrase is not an objection ("not now, we're ready!").
    rule_max_score: float = 0.75
    # The live coach's keywords for the tag's topic occur in the segment: the bar drops by this much.
    topic_bonus: float = 0.04
    rule_confidence: float = 0.9

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        for name in ("min_similarity", "positive_score", "rule_max_score", "rule_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def load_examples(path: Path = EXAMPLES_PATH) -> dict[str, list[str]]:
    """{class: sentences} for the five tags and "none"; a clear error when the file is incomplete."""
    data = json.loads(path.read_text())
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, dict):
        raise ValueError(f"{path}: expected an object with an 'examples' object")
    for name in (*TAGS, NONE_CLASS):
        sentences = examples.get(name)
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{path}: 'examples.{name}' must be a non-empty list of sentences")
    unknown = set(examples) - {*TAGS, NONE_CLASS}
    if unknown:
        raise ValueError(
            f"{path}: unknown classes {sorted(unknown)}; known: {', '.join((*TAGS, NONE_CLASS))}"
        )
    return {name: list(examples[name]) for name in (*TAGS, NONE_CLASS)}


class _ExampleBank:
    """The labelled examples' embeddings, one matrix per class."""

    def __init__(self, encoder: MiniLMEncoder, examples: Mapping[str, Sequence[str]]) -> None:
        self.by_class: dict[str, Matrix] = {name: encoder.encode(list(s)) for name, s in examples.items()}

    def class_similarities(self, embeddings: Matrix, k: int) -> dict[str, np.ndarray]:
        """Per class, each row's mean cosine to its k nearest examples of that class."""
        result: dict[str, np.ndarray] = {}
        for name, matrix in self.by_class.items():
            similarities = embeddings @ matrix.T
            nearest = min(k, matrix.shape[0])
            top = -np.sort(-similarities, axis=1)[:, :nearest]
            result[name] = top.mean(axis=1)
        return result


class LocalObjectionTagger:
    """Rules + nearest labelled examples; no network. Thread-safe; the encoder and the examples' embeddings
    load on the first ``tag`` (the process-wide encoder unless one is given)."""

    def __init__(
        self,
        settings: TaggerSettings | None = None,
        live_settings: BadgeSettings = DEFAULT_SETTINGS,
        encoder: MiniLMEncoder | None = None,
        examples_path: Path = EXAMPLES_PATH,
    ) -> None:
        self.settings = settings or TaggerSettings()
        self._live_settings = live_settings
        self._encoder = encoder
        self._examples = load_examples(examples_path)  # read now: a broken file fails at start-up
        self._bank: _ExampleBank | None = None
        self._lock = threading.Lock()

    def _example_bank(self) -> tuple[MiniLMEncoder, _ExampleBank]:
        with self._lock:
            if self._encoder is None:
                self._encoder = shared_encoder()
            if self._bank is None:
                self._bank = _ExampleBank(self._encoder, self._examples)
            return self._encoder, self._bank

    def tag(self, events: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        segments = customer_segments(events)
        if not segments:
            return []
        encoder, bank = self._example_bank()
        similarities = bank.class_similarities(encoder.encode([e.text for e in segments]), self.settings.k)
        tags: list[ObjectionTag] = []
        for row, event in enumerate(segments):
            per_class = {name: float(values[row]) for name, values in similarities.items()}
            tags += self._tags_for(event, per_class)
        return _sorted_tags(tags)

    def _tags_for(self, event: UtteranceScore, similarity: Mapping[str, float]) -> list[ObjectionTag]:
        s = self.settings
        by_rule = rule_tags(event.text, self._live_settings)
        topics = topic_hits(event.text, self._live_settings)
        nearest = max(TAGS, key=lambda t: similarity[t])
        tags: list[ObjectionTag] = []
        for tag in TAGS:
            mentioned = TAG_TOPICS[tag] in topics
            if tag in by_rule and (event.score <= s.rule_max_score or tag == "competitor mention"):
                tags.append(ObjectionTag.for_event(event, tag, s.rule_confidence, "rules"))
            # Objection examples resemble each other ("we can't spend that" is near "we don't need it"):
            # the model gives its nearest tag, and a second one only where that topic's keywords occur.
            elif (tag == nearest or mentioned) and self._model_says(tag, event.score, similarity, mentioned):
                tags.append(ObjectionTag.for_event(event, tag, similarity[tag], "model"))
        return tags

    def _model_says(
        self, tag: str, score: float, similarity: Mapping[str, float], topic_mentioned: bool
    ) -> bool:
        s = self.settings
        positivity = max(0.0, score - s.positive_score) / max(1e-9, 1.0 - s.positive_score)
        required = (
            s.min_similarity + s.positive_extra * positivity - (s.topic_bonus if topic_mentioned else 0.0)
        )
        return similarity[tag] >= required and similarity[tag] - similarity[NONE_CLASS] >= s.margin


# -------------------------------------------------------------------------------------------------- LLM

LLM_SYSTEM_PROMPT = (
    "You tag objections in the customer's side of a sales call. Tags:\n"
    '- "pricing pushback": the price, cost or budget is a problem for them.\n'
    '- "timeline concern": the timing, schedule or roll-out time is a problem; they want to wait.\n'
    '- "competitor mention": they name or refer to a competitor, another vendor or their current tool.\n'
    '- "authority": someone else must decide, approve or sign off.\n'
    '- "no need": they do not see the need or value, or are not interested.\n'
    "Questions, neutral facts and positive remarks are not objections. A segment may have several tags "
    "or none. Reply with JSON only, no prose: "
    '{"tags": [{"utterance_id": <int>, "tag": "<one of the tags>", "confidence": <0..1>}]}'
)


class MalformedReplyError(ValueError):
    """The endpoint answered, but not with the JSON tags asked for."""


@dataclass(frozen=True)
class LlmSettings:
    """An OpenAI-compatible endpoint: ``url`` is the API base (``.../v1``) or the full
    ``.../chat/completions`` address."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 20.0
    # Segments per request: bounds the prompt (a long call has hundreds) and the damage of one bad reply.
    segments_per_request: int = 40

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{ENV_LLM_URL} must be an http(s) URL, got {self.url!r}")
        if not self.model.strip():
            raise ValueError(f"{ENV_LLM_URL} is set but {ENV_LLM_MODEL} is empty: name the model to ask")
        if not self.timeout_s > 0:
            raise ValueError(f"{ENV_LLM_TIMEOUT} must be > 0 seconds, got {self.timeout_s}")
        if self.segments_per_request < 1:
            raise ValueError(f"segments_per_request must be >= 1, got {self.segments_per_request}")

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


class LlmObjectionTagger:
    """Tags from an OpenAI-compatible chat model; the local tagger answers whenever the model cannot.

    The whole call falls back together, so one call's tags never mix two judges."""

    def __init__(
        self,
        settings: LlmSettings,
        fallback: ObjectionTagger | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.fallback: ObjectionTagger = fallback or LocalObjectionTagger()
        self._transport = transport

    def tag(self, events: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        segments = customer_segments(events)
        if not segments:
            return []
        size = self.settings.segments_per_request
        try:
            with httpx.Client(timeout=self.settings.timeout_s, transport=self._transport) as client:
                tags = [
                    t
                    for i in range(0, len(segments), size)
                    for t in self._ask(client, segments[i : i + size])
                ]
        except Exception as exc:  # any failure: the LLM is a nicety, the call's tags must not be lost
            log.warning(
                "objection LLM at %s failed (%s: %s); using the local tagger",
                self.settings.endpoint,
                type(exc).__name__,
                exc,
            )
            return self.fallback.tag(events)
        return _sorted_tags(tags)

    def _ask(self, client: httpx.Client, segments: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        user = json.dumps({"segments": [{"utterance_id": e.utterance_id, "text": e.text} for e in segments]})
        response = client.post(
            self.settings.endpoint,
            headers=headers,
            json={
                "model": self.settings.model,
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": LLM_SYSTEM_PROMPT},
                    {"role": "user", "content": user},
                ],
            },
        )
        response.raise_for_status()
        return parse_llm_reply(response.json(), segments)


def _reply_content(reply: Any) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise MalformedReplyError("no choices[0].message.content in the reply") from exc
    if not isinstance(content, str):
        raise MalformedReplyError("choices[0].message.content is not a string")
    # Chat models like to wrap JSON in a ```json fence despite being told not to.
    fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", content, flags=re.DOTALL)
    return fenced.group(1) if fenced else content


def parse_llm_reply(reply: Any, segments: Sequence[UtteranceScore]) -> list[ObjectionTag]:
    """The tags in a chat-completions reply; MalformedReplyError on anything but the asked-for JSON, an
    unknown tag or an utterance that was not asked about (a model that invents those is not trusted)."""
    try:
        payload = json.loads(_reply_content(reply))
    except json.JSONDecodeError as exc:
        raise MalformedReplyError(f"the message is not JSON: {exc}") from exc
    entries = payload.get("tags") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise MalformedReplyError('the message has no "tags" list')
    by_id = {e.utterance_id: e for e in segments}
    tags: dict[tuple[int, str], ObjectionTag] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise MalformedReplyError(f"tag entry {entry!r} is not an object")
        utterance_id, tag, confidence = (
            entry.get("utterance_id"),
            entry.get("tag"),
            entry.get("confidence", 0.8),
        )
        if not isinstance(utterance_id, int) or utterance_id not in by_id:
            raise MalformedReplyError(f"tag entry {entry!r} names an utterance that was not asked about")
        if tag not in TAGS:
            raise MalformedReplyError(f"tag entry {entry!r} has an unknown tag")
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not 0 <= confidence <= 1
        ):
            raise MalformedReplyError(f"tag entry {entry!r} has a confidence outside [0, 1]")
        tags[(utterance_id, tag)] = ObjectionTag.for_event(by_id[utterance_id], tag, float(confidence), "llm")
    return list(tags.values())


# -------------------------------------------------------------------------------------------------- env


def tagger_from_env(env: Mapping[str, str] = os.environ) -> ObjectionTagger:
    """The LLM tagger (with the local one as fallback) when ``CALLSENSE_OBJECTIONS_LLM_URL`` is set;
    otherwise the local tagger. A half-configured LLM is an error that says what to set."""
    url = env.get(ENV_LLM_URL, "").strip()
    if not url:
        return LocalObjectionTagger()
    timeout = env.get(ENV_LLM_TIMEOUT, "").strip()
    try:
        timeout_s = float(timeout) if timeout else LlmSettings.timeout_s
    except ValueError:
        raise ValueError(f"{ENV_LLM_TIMEOUT} must be a number of seconds, got {timeout!r}") from None
    settings = LlmSettings(
        url=url,
        model=env.get(ENV_LLM_MODEL, "").strip(),
        api_key=env.get(ENV_LLM_API_KEY, "").strip() or None,
        timeout_s=timeout_s,
    )
    return LlmObjectionTagger(settings)
