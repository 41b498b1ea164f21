"""How well the shipped objection tagger tags the sales corpus (`callsense objections evaluate`).

The tagger is fed what the post-call worker feeds it: a call's scored utterances (``UtteranceScore``, every
speaker, in call order, each scored by the shipped sentiment model with the line before as context where
the model takes it), one ``tag`` call per call. Each corpus line is one utterance, so each line is one
segment and the figures are per line: a line's predicted tags against its gold tag (at most one, customer
lines only; see docs/labelling.md).

Figures (``ObjectionEvaluation``):

- per tag: precision, recall, F1 over the split's customer lines (a line with two predicted tags counts
  each); micro precision / recall / F1 over the five tags together;
- false-tag rate: the share of customer lines without a gold tag that got any tag;
- the false-tag rate on "mentions": customer lines without a gold tag, labelled positive or neutral, that
  mention money, dates or time, a boss or approver, or a vendor (``MENTION_PATTERNS``, whole words, case
  folded, on the written text, so that both shapes count the same lines). These are the lines a
  keyword-happy tagger gets wrong ("I love the idea, what would it cost?"). Overall and per kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from callsense.domain import UtteranceScore
from callsense.report import TAGS
from postcall.objections import TAGGED_CHANNELS, ObjectionTagger
from scorer_service.inference import SentimentInput, SentimentModel

SALES_DIR = Path(__file__).resolve().parents[1] / "data" / "sales"
SPLITS = ("train", "dev", "test")
# The goals of issue 12 on the sales test split.
GOAL_MICRO_F1 = 0.85
GOAL_FALSE_TAG_RATE = 0.05
UTTERANCE_MS = 5000  # each line's place on the call's clock: line n starts at n * 5 s

# What a line "mentions" (regular expressions on whole words of the lower-cased text). Broad on purpose:
# they pick the untagged lines that talk about what objections talk about, to check no tag lands there.
MENTION_PATTERNS: Mapping[str, str] = {
    "money": (
        r"[$£€]\d*|prices?|pricing|priced|pricey|costs?|costing|budget(?:s|ed)?|pay|paying|paid|spend"
        r"|spending|spent|invoices?|discounts?|quotes?|quoted|fees?|dollars?|pounds|euros?|bucks|grand"
        r"|thousand|hundred|million|per (?:seat|user|month|year|head)|a (?:month|year)|annual(?:ly)?"
        r"|expensive|cheap(?:er)?|afford(?:able)?|money|roi|licen[cs]es?|rates?|contract"
    ),
    "time": (
        r"today|tomorrow|tonight|yesterday|soon|soonest|fast|faster|quick(?:ly)?|slow(?:ly)?|timeline"
        r"|timing|deadlines?|schedules?|rollout|roll (?:it )?out|go[- ]live|launch|onboarding|weeks?"
        r"|months?|years?|days?|quarters?|q[1-4]|seasons?|summer|autumn|fall|winter|spring|monday|tuesday"
        r"|wednesday|thursday|friday|weekend|january|february|march|april|june|july|august|september"
        r"|october|november|december|next|later|end of|by then|now|minutes?|hours?|dates?|start(?:ing)?"
    ),
    "approver": (
        r"boss|manager|director|vp|vice president|cfo|ceo|coo|cto|cio|head of|board|owner|founder"
        r"|finance|procurement|legal|approv(?:e|al|ed|es|ing)|sign[- ]?off|sign (?:it|this|that) off"
        r"|decides?|decision|committee|chair|president|leadership"
    ),
    "vendor": (
        r"vendors?|providers?|suppliers?|competitors?|tools?|platforms?|software|systems?|apps?"
        r"|solutions?|products?|salesforce|hubspot|pipedrive|zoho|gong|outreach|salesloft|zendesk"
        r"|servicenow|stripe|excel|spreadsheets?|google|microsoft|sap|oracle|quickbooks|xero|currently use"
        r"|already use|we use|using"
    ),
}
_MENTIONS = {kind: re.compile(r"\b(?:" + pattern + r")\b") for kind, pattern in MENTION_PATTERNS.items()}


def mentions(text: str) -> list[str]:
    """The kinds of ``MENTION_PATTERNS`` that ``text`` mentions, in that order."""
    lowered = " ".join(text.lower().replace("\u2019", "'").split())
    return [kind for kind, pattern in _MENTIONS.items() if pattern.search(lowered)]


@dataclass(frozen=True)
class GoldLine:
    """One corpus line with its adjudicated label and objection tag (None: no objection)."""

    line_id: str
    call_id: str
    speaker: str
    text: str
    asr_text: str
    split: str
    label: str
    objection: str | None


def load_gold_lines(directory: Path = SALES_DIR, split: str | None = None) -> list[GoldLine]:
    """The corpus's lines with gold labels, in call order (lines without a gold row are left out)."""
    gold: dict[str, dict[str, Any]] = {}
    for raw in (directory / "gold.jsonl").read_text(encoding="utf-8").splitlines():
        if raw.strip():
            row = json.loads(raw)
            gold[row["line_id"]] = row
    lines = []
    for raw in (directory / "lines.jsonl").read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        row = json.loads(raw)
        if row["line_id"] not in gold or (split is not None and row["split"] != split):
            continue
        verdict = gold[row["line_id"]]
        objection = verdict.get("objection")
        if objection is not None and objection not in TAGS:
            raise ValueError(f"{row['line_id']}: unknown objection tag {objection!r} in gold.jsonl")
        lines.append(
            GoldLine(
                line_id=row["line_id"],
                call_id=row["call_id"],
                speaker=row["speaker"],
                text=row["text"],
                asr_text=row["asr_text"],
                split=row["split"],
                label=verdict["label"],
                objection=objection,
            )
        )
    return lines


def by_call(lines: Sequence[GoldLine]) -> dict[str, list[GoldLine]]:
    calls: dict[str, list[GoldLine]] = {}
    for line in lines:
        calls.setdefault(line.call_id, []).append(line)
    return calls


def scored_call(lines: Sequence[GoldLine], model: SentimentModel, asr: bool = False) -> list[UtteranceScore]:
    """One call's lines as the gateway stores them: customer lines on the customer channel, the rep's on
    the agent channel, each scored by ``model`` (the line before as context); utterance id = position."""
    texts = [line.asr_text if asr else line.text for line in lines]
    inputs = [SentimentInput(text, texts[i - 1] if i else "") for i, text in enumerate(texts)]
    events = []
    for i, (line, text, p) in enumerate(zip(lines, texts, model.predict(inputs), strict=True)):
        if isinstance(p, Exception):
            raise ValueError(f"{line.line_id}: the sentiment model rejected the line: {p}")
        events.append(
            UtteranceScore(
                call_id=line.call_id,
                utterance_id=i,
                channel="customer" if line.speaker == "customer" else "agent",
                start_ms=i * UTTERANCE_MS,
                end_ms=i * UTTERANCE_MS + UTTERANCE_MS - 500,
                text=text,
                label=p.label,  # type: ignore[arg-type]
                p_negative=p.p_negative,
                p_neutral=p.p_neutral,
                p_positive=p.p_positive,
                score=p.score,
                model_version=model.info.version,
            )
        )
    return events


def predict_lines(
    tagger: ObjectionTagger,
    lines: Sequence[GoldLine],
    model: SentimentModel,
    asr: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, set[str]]:
    """{line_id: predicted tags} for every line, one ``tagger.tag`` per call (as the worker calls it)."""
    predicted: dict[str, set[str]] = {line.line_id: set() for line in lines}
    calls = by_call(lines)
    for done, call_lines in enumerate(calls.values(), start=1):
        for tag in tagger.tag(scored_call(call_lines, model, asr)):
            predicted[call_lines[tag.utterance_id].line_id].add(tag.tag)
        if progress:
            progress(done, len(calls))
    return predicted


@dataclass(frozen=True)
class TagFigures:
    precision: float
    recall: float
    f1: float
    support: int  # gold lines with the tag
    predicted: int  # lines given the tag


@dataclass(frozen=True)
class ObjectionEvaluation:
    split: str
    asr: bool
    lines: int  # customer lines scored
    per_tag: dict[str, TagFigures]
    micro: TagFigures
    untagged_lines: int
    false_tag_rate: float
    mention_lines: int
    mention_false_tag_rate: float
    mention_false_tags: dict[str, tuple[int, int]]  # kind: (lines tagged anyway, lines of that kind)
    false_tags: list[dict[str, Any]] = field(default_factory=list)  # the gold-untagged lines tagged
    missed: list[dict[str, Any]] = field(default_factory=list)  # gold-tagged lines without their tag

    def meets_goals(self) -> bool:
        return self.micro.f1 >= GOAL_MICRO_F1 and self.false_tag_rate <= GOAL_FALSE_TAG_RATE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _figures(tp: int, fp: int, fn: int) -> TagFigures:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return TagFigures(round(precision, 4), round(recall, 4), round(f1, 4), tp + fn, tp + fp)


def score_predictions(
    lines: Sequence[GoldLine], predicted: Mapping[str, set[str]], split: str = "", asr: bool = False
) -> ObjectionEvaluation:
    """The figures of ``predicted`` tags against the gold tags of the customer lines of ``lines``."""
    customer = [line for line in lines if line.speaker in TAGGED_CHANNELS]
    counts = {tag: [0, 0, 0] for tag in TAGS}  # tp, fp, fn
    untagged = tagged_anyway = 0
    mention_totals: dict[str, list[int]] = {kind: [0, 0] for kind in MENTION_PATTERNS}
    mention_lines = mention_tagged = 0
    false_tags: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    for line in customer:
        tags = predicted.get(line.line_id, set())
        gold = {line.objection} if line.objection else set()
        for tag in TAGS:
            counts[tag][0] += tag in tags and tag in gold
            counts[tag][1] += tag in tags and tag not in gold
            counts[tag][2] += tag not in tags and tag in gold
        if gold - tags:
            missed.append({"line_id": line.line_id, "gold": line.objection, "tags": sorted(tags)})
        if gold:
            continue
        untagged += 1
        tagged_anyway += bool(tags)
        if tags:
            false_tags.append({"line_id": line.line_id, "label": line.label, "tags": sorted(tags)})
        kinds = mentions(line.text) if line.label in ("positive", "neutral") else []
        if kinds:
            mention_lines += 1
            mention_tagged += bool(tags)
            for kind in kinds:
                mention_totals[kind][0] += bool(tags)
                mention_totals[kind][1] += 1
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    return ObjectionEvaluation(
        split=split,
        asr=asr,
        lines=len(customer),
        per_tag={tag: _figures(*c) for tag, c in counts.items()},
        micro=_figures(*total),
        untagged_lines=untagged,
        false_tag_rate=round(tagged_anyway / untagged, 4) if untagged else 0.0,
        mention_lines=mention_lines,
        mention_false_tag_rate=round(mention_tagged / mention_lines, 4) if mention_lines else 0.0,
        mention_false_tags={kind: (t[0], t[1]) for kind, t in mention_totals.items()},
        false_tags=false_tags,
        missed=missed,
    )


def evaluate_tagger(
    tagger: ObjectionTagger,
    split: str,
    model: SentimentModel,
    asr: bool = False,
    directory: Path = SALES_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> ObjectionEvaluation:
    """The tagger's figures on one split of the sales corpus."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    lines = load_gold_lines(directory, split)
    return score_predictions(lines, predict_lines(tagger, lines, model, asr, progress), split, asr)


def render_text(result: ObjectionEvaluation) -> str:
    """The figures as a table for people."""
    shape = "as the ASR writes it" if result.asr else "written text"
    out = [
        f"sales:{result.split} ({shape}): {result.lines} customer lines, one segment per line",
        f"{'tag':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'gold':>5} {'tagged':>6}",
    ]
    for tag, f in (*result.per_tag.items(), ("micro", result.micro)):
        out.append(
            f"{tag:<20} {f.precision:>9.3f} {f.recall:>7.3f} {f.f1:>6.3f} {f.support:>5} {f.predicted:>6}"
        )
    tagged = round(result.false_tag_rate * result.untagged_lines)
    out.append(
        f"false-tag rate: {result.false_tag_rate:.3f} ({tagged} of {result.untagged_lines} lines without a "
        "gold tag got one)"
    )
    out.append(
        f"false-tag rate on positive/neutral lines that mention money, time, an approver or a vendor: "
        f"{result.mention_false_tag_rate:.3f} of {result.mention_lines}"
    )
    for kind, (hit, total) in result.mention_false_tags.items():
        out.append(f"  {kind:<9} {hit:>3} of {total:>3}" + (f" ({hit / total:.3f})" if total else ""))
    verdict = "meets" if result.meets_goals() else "misses"
    out.append(
        f"goals (micro-F1 >= {GOAL_MICRO_F1}, false-tag rate <= {GOAL_FALSE_TAG_RATE}): {verdict} them"
    )
    return "\n".join(out)
