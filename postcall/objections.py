"""Objection tags per call segment: what the customer pushed back on, and where.

Five tags (``TAGS``): "pricing pushback", "timeline concern", "competitor mention", "authority", "no need".
Only the customer's side is tagged (``customer`` and, on a mono line, ``mixed`` segments): an agent saying
"our price is 40k" puts pricing on the table but is no objection.

- ``LocalObjectionTagger``: no network, always there. Two signals per segment:
  1. Phrase rules (``OBJECTION_RULES``): few, narrow, precise; a rule that fires gives its tag, unless the
     segment is clearly positive ("not now, we're ready!"). No rule names a rival: "we use HubSpot today"
     is a fact, not an objection; the classifier tells the two apart.
  2. A fine-tuned classifier (``postcall/objection_encoder.py``: MiniLM with adapters trained end to end,
     in ``objection_adapters/``, its fits averaged, run in NumPy) reads each customer segment with
     the rep's segments before and after it (what the rep said and answered) and gives six probabilities,
     "none" and the tags; a tag is given where its probability reaches the fits' threshold (chosen on a
     held-out split for precision).
     Trained by ``callsense objections train`` (training/objection_finetune.py) on the sales corpus's
     labelled customer lines and the hand-written sentences of ``objection_examples.json``.
  Figures: ``callsense objections evaluate`` and docs/objections.md.
- ``LlmObjectionTagger``: asks an OpenAI-compatible chat-completions endpoint for the tags as JSON; any
  failure or malformed reply falls back to the local tagger (logged). Optional, never required.
- ``tagger_from_env``: the LLM tagger when ``CALLSENSE_OBJECTIONS_LLM_URL`` is set, else the local one.

Taggers block (encoder forward pass, HTTP): the caller runs ``tag`` in a thread. The local tagger
encodes each customer segment once, with its neighbours.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import httpx

from callsense.domain import UtteranceScore
from callsense.report import TAGS, ObjectionName, ObjectionTag
from callsense.topics import Topic
from postcall.objection_encoder import (
    ADAPTER_PATH,
    NONE_CLASS,
    ObjectionClassifier,
    segment_contexts,
    shared_classifier,
)

log = logging.getLogger(__name__)

# The live coach's topic for each tag: the summary names spikes by it.
TAG_TOPICS: Mapping[str, Topic] = {
    "pricing pushback": "pricing",
    "timeline concern": "timeline",
    "competitor mention": "competitor",
    "authority": "authority",
    "no need": "need",
}
TAGGED_CHANNELS = frozenset({"customer", "mixed"})
# Hand-written sentences per tag and "none": training data beside the corpus (callsense objections train).
EXAMPLES_PATH = Path(__file__).with_name("objection_examples.json")

ENV_LLM_URL = "CALLSENSE_OBJECTIONS_LLM_URL"
ENV_LLM_MODEL = "CALLSENSE_OBJECTIONS_LLM_MODEL"
ENV_LLM_API_KEY = "CALLSENSE_OBJECTIONS_LLM_API_KEY"
ENV_LLM_TIMEOUT = "CALLSENSE_OBJECTIONS_LLM_TIMEOUT_S"
# The local tagger's adapters instead of the shipped folder: another folder of fits (averaged) or one fit's
# file, e.g. your own `callsense objections train --out` (docs/objections.md).
ENV_MODEL = "CALLSENSE_OBJECTIONS_MODEL"


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
        r"(?:price|pricing|cost|quote|fee)s? (?:is|are|was|seems|looks) (?:\w+ )?(?:too )?"
        r"(?:high|steep|ridiculous|outrageous|absurd|excessive)",
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


def rule_tags(text: str) -> set[ObjectionName]:
    """The tags whose phrase rules match ``text``."""
    normalised = _normalise(text)
    return {tag for tag, pattern in _rule_patterns() if pattern.search(normalised)}


# ------------------------------------------------------------------------------------------------ model


def load_examples(path: Path = EXAMPLES_PATH) -> dict[str, list[str]]:
    """{class: sentences} for the five tags and "none" (hand-written training sentences for
    ``callsense objections train``); a clear error when the file is incomplete."""
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


def call_segments(events: Sequence[UtteranceScore]) -> list[UtteranceScore]:
    """Every speaker's non-empty segments, each utterance once, in call order: the customer's segments
    and the context around each (what the rep said before and after)."""
    unique = {e.utterance_id: e for e in events if e.text.strip()}
    return sorted(unique.values(), key=lambda e: (e.start_ms, e.utterance_id))


@dataclass(frozen=True)
class TaggerSettings:
    """How the phrase rules act beside the classifier (whose threshold is in its adapter file)."""

    # A rule (other than a competitor's name: "we use HubSpot" is a fact, not an objection) gives its tag
    # outright, unless the segment is clearly positive (scored above this): positivity means the phrase is
    # not an objection ("not now, we're ready!"), and the tag is not given.
    rule_max_score: float = 0.75
    rule_confidence: float = 0.9

    def __post_init__(self) -> None:
        for name in ("rule_max_score", "rule_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class LocalObjectionTagger:
    """Rules + the fine-tuned classifier; no network. Thread-safe; the classifier loads at construction
    (a broken adapter file, or base weights other than the ones it was trained on, fail at start-up)."""

    def __init__(
        self,
        settings: TaggerSettings | None = None,
        model_path: Path = ADAPTER_PATH,
        classifier: ObjectionClassifier | None = None,
    ) -> None:
        self.settings = settings or TaggerSettings()
        self.model = classifier or shared_classifier(model_path)

    def tag(self, events: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        segments = call_segments(events)
        customer = [i for i, e in enumerate(segments) if e.channel in TAGGED_CHANNELS]
        if not customer:
            return []
        texts = [e.text for e in segments]
        contexts = segment_contexts(texts, [e.channel for e in segments])
        pairs = [(contexts[i], texts[i]) for i in customer]
        by_model = self.model.tags(self.model.probabilities(pairs))
        tags: list[ObjectionTag] = []
        for index, model_tags in zip(customer, by_model, strict=True):
            tags += self._tags_for(segments[index], dict(model_tags))
        return _sorted_tags(tags)

    def _tags_for(self, event: UtteranceScore, by_model: Mapping[str, float]) -> list[ObjectionTag]:
        s = self.settings
        by_rule = rule_tags(event.text)
        tags: list[ObjectionTag] = []
        happy = event.score > s.rule_max_score
        for tag in TAGS:
            if tag in by_rule and not happy:
                tags.append(ObjectionTag.for_event(event, tag, s.rule_confidence, "rules"))
            # A rule's phrase said happily is no objection, whoever reads it: the model's tag is not given
            # either.
            elif tag in by_model and tag not in by_rule:
                tags.append(ObjectionTag.for_event(event, tag, by_model[tag], "model"))
        return tags


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
    otherwise the local tagger, reading ``CALLSENSE_OBJECTIONS_MODEL`` where set (a fit's file or a folder of
    fits). A half-configured LLM is an error that says what to set; a broken model path fails here."""
    model = env.get(ENV_MODEL, "").strip()
    # Resolved: the process's classifier is cached by path, and a relative one names the same files twice.
    local = LocalObjectionTagger(model_path=Path(model).resolve()) if model else LocalObjectionTagger()
    url = env.get(ENV_LLM_URL, "").strip()
    if not url:
        return local
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
    return LlmObjectionTagger(settings, fallback=local)
