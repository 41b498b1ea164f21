"""The sales-call corpus: written calls in, one row per line out, with its ASR-shaped twin and its split.

``data/sales/written/*.jsonl`` holds the calls as they were written (one call per line: call metadata
and its lines; see data/sales/DATASHEET.md). ``build_corpus`` turns them into ``data/sales/lines.jsonl``,
one row per line:

- ``line_id`` (``<call_id>:<nn>``, stable: the written order), ``call_id``, ``speaker`` (``agent`` or
  ``customer``), ``stage`` (where in the call's arc the writer put it), ``text``;
- ``asr_text``: the same words as a streaming recogniser gives them (``asr_shape``): lower case, no
  punctuation, a filler now and then, and now and then a word mis-heard as a similar-sounding one;
- ``split``: ``train``, ``dev`` or ``test``, by call (a hash of the call id, so adding calls never moves
  another call between splits). The test split is read once per model, for its card.

``annotation_packets`` writes what an annotator sees: the calls' lines with ids, speakers and text, and
nothing of the writer's intent (no stage, outcome or objections). Labels come back through
``training.labels``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Split = Literal["train", "dev", "test"]
SPEAKERS = ("agent", "customer")
STAGES = ("opening", "discovery", "demo", "pricing", "objection", "negotiation", "close", "follow_up")
OUTCOMES = ("won", "lost", "stalled", "follow_up")
OBJECTIONS = ("pricing pushback", "timeline concern", "competitor mention", "authority", "no need")
# Share of calls per split, by call-id hash: 70 / 15 / 15.
SPLIT_BOUNDS: tuple[tuple[float, Split], ...] = ((0.70, "train"), (0.85, "dev"), (1.0, "test"))

# What a streaming recogniser does to clean speech (tiny.en on phone audio, as seen on the mesh):
# fillers it keeps, and a few confusions between words that sound alike. Applied sparingly.
FILLERS = ("um", "uh", "you know", "like", "i mean", "so")
FILLER_RATE = 0.08  # chance per line of one filler at a clause start
MISHEARD: dict[str, str] = {
    "budgeted": "monitored",
    "budget": "budge it",
    "quote": "coat",
    "seats": "seeds",
    "contract": "contact",
    "renewal": "removal",
    "pricing": "prizing",
    "onboarding": "on boarding",
    "integration": "integrations",
    "quarter": "order",
    "invoices": "invoice is",
    "demo": "demon",
    "pilot": "pirate",
    "rollout": "roll out",
    "procurement": "pro curement",
    "discount": "this count",
    "annual": "annul",
    "licence": "license",
    "license": "licenses",
    "their": "there",
    "we'd": "we",
    "can't": "can",
}
MISHEAR_RATE = 0.15  # chance of one confusion in a line that has a confusable word


class CorpusError(ValueError):
    """A written call breaks the corpus format; the message names the file, the call and the field."""


@dataclass(frozen=True)
class CorpusLine:
    line_id: str
    call_id: str
    speaker: str
    stage: str
    text: str
    asr_text: str
    split: Split


@dataclass(frozen=True)
class WrittenCall:
    call_id: str
    industry: str
    product: str
    deal_size: str
    buyer_personality: str
    outcome: str
    objections: tuple[str, ...]
    lines: tuple[tuple[str, str, str], ...]  # (speaker, stage, text)


def split_of(call_id: str) -> Split:
    """The call's split, from a hash of its id alone."""
    fraction = int(hashlib.sha256(call_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return next(split for bound, split in SPLIT_BOUNDS if fraction <= bound)


def asr_shape(text: str, rng: random.Random) -> str:
    """``text`` as a recogniser writes it: lower case, no punctuation but apostrophes, a filler now and
    then, a mis-heard word now and then."""
    words = re.sub(r"[^\w'$%\s-]", " ", text.lower().replace("—", " ")).replace(" - ", " ").split()
    words = [w.strip("-'") for w in words if w.strip("-'")]
    confusable = [i for i, w in enumerate(words) if w in MISHEARD]
    if confusable and rng.random() < MISHEAR_RATE:
        i = rng.choice(confusable)
        words[i] = MISHEARD[words[i]]
    if words and rng.random() < FILLER_RATE:
        words.insert(rng.randrange(0, min(len(words), 4)), rng.choice(FILLERS))
    return " ".join(words)


def read_written(paths: Iterable[Path]) -> list[WrittenCall]:
    """Every call of the written files, checked; CorpusError names the first problem."""
    calls: list[WrittenCall] = []
    seen: set[str] = set()
    for path in sorted(paths):
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                call = _written_call(json.loads(raw))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CorpusError(f"{where}: {exc}") from exc
            if call.call_id in seen:
                raise CorpusError(f"{where}: call_id {call.call_id!r} appears twice")
            seen.add(call.call_id)
            calls.append(call)
    return calls


def _written_call(row: dict[str, Any]) -> WrittenCall:
    def one_of(value: object, allowed: Sequence[str], what: str) -> str:
        if value not in allowed:
            raise ValueError(f"{what} {value!r} is not one of {', '.join(allowed)}")
        return str(value)

    lines = []
    for line in row["lines"]:
        text = str(line["text"]).strip()
        if not text:
            raise ValueError(f"call {row['call_id']}: an empty line")
        lines.append(
            (one_of(line["speaker"], SPEAKERS, "speaker"), one_of(line["stage"], STAGES, "stage"), text)
        )
    return WrittenCall(
        call_id=str(row["call_id"]),
        industry=str(row["industry"]),
        product=str(row["product"]),
        deal_size=str(row["deal_size"]),
        buyer_personality=str(row["buyer_personality"]),
        outcome=one_of(row["outcome"], OUTCOMES, "outcome"),
        objections=tuple(one_of(o, OBJECTIONS, "objection") for o in row["objections"]),
        lines=tuple(lines),
    )


def corpus_lines(calls: Sequence[WrittenCall], seed: int = 0) -> Iterator[CorpusLine]:
    """One row per written line; the ASR shape is seeded by the line id, so a rebuild is identical."""
    for call in calls:
        split = split_of(call.call_id)
        for n, (speaker, stage, text) in enumerate(call.lines):
            line_id = f"{call.call_id}:{n:02d}"
            rng = random.Random(f"{seed}:{line_id}")
            yield CorpusLine(line_id, call.call_id, speaker, stage, text, asr_shape(text, rng), split)


def build_corpus(written_dir: Path, out: Path) -> list[CorpusLine]:
    """Write ``out`` (JSON Lines) from the written calls under ``written_dir``; returns the rows."""
    rows = list(corpus_lines(read_written(written_dir.glob("*.jsonl"))))
    out.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def annotation_packets(rows: Sequence[CorpusLine], out_dir: Path, parts: int, first: int = 1) -> list[Path]:
    """Split the calls into ``parts`` packets for annotators: per call, its lines in order (line_id,
    speaker, text) and nothing else. Packet k holds every ``parts``-th call from the k-th; the packets are
    numbered from ``first`` (a batch of new calls is packed after the packets already labelled)."""
    by_call: dict[str, list[CorpusLine]] = {}
    for row in rows:
        by_call.setdefault(row.call_id, []).append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(parts):
        calls = [
            {
                "call_id": call_id,
                "lines": [{"line_id": r.line_id, "speaker": r.speaker, "text": r.text} for r in lines],
            }
            for i, (call_id, lines) in enumerate(sorted(by_call.items()))
            if i % parts == k
        ]
        path = out_dir / f"packet-{first + k}.jsonl"
        path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in calls), encoding="utf-8")
        paths.append(path)
    return paths
