"""The tone fusion head's card: ``FUSION_CARD.md`` beside ``fusion.json``, and a section of the text
model's MODEL_CARD.md (between markers, replaced on every run, so a card written by ``callsense export``
keeps everything else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scorer_service.fusion.head import FusionHead
from training.fusion_calls import LABELS

BEGIN = "<!-- tone-fusion:begin (written by callsense train-fusion) -->"
END = "<!-- tone-fusion:end -->"


def _row(name: str, report: dict[str, Any]) -> str:
    recalls = " | ".join(f"{report['per_class'][label]['recall']:.3f}" for label in LABELS)
    return f"| {name} | {report['macro_f1']:.3f} | {recalls} | {report['accuracy']:.3f} |"


def section(head: FusionHead, heading: str = "##") -> str:
    """The card's body: data, split, shape, metrics."""
    training = head.card.get("training", {})
    chosen = training.get("chosen", {})
    members = int(chosen.get("members", 1))
    shape = (
        "logistic regression"
        if len(head.layers) == 1
        else f"MLP of {chosen.get('hidden')} tanh units" + (f", {members} averaged" if members > 1 else "")
    )
    lines = [
        f"{heading} Tone fusion {head.version}",
        "",
        "The scorer fuses an utterance's prosody, read against the same speaker's earlier utterances in the "
        "call, with the text model's probabilities (scorer_service/fusion; `fusion.json`, NumPy only). "
        "Text inputs, MIXED channels and a speaker's first utterance keep the text model's scores exactly.",
        "",
        f"- data: {training.get('data', '?')}; valence: {training.get('valence', '?')}",
        f"- split by actor: chosen on actors {_span(training.get('choose_actors'))}, reported on "
        f"{_span(training.get('report_actors'))}; {training.get('never', '')} never used",
        f"- path: {training.get('path', '?')}",
        f"- features: {_features(head.features)} ({head.expansion}); {shape}, L2 {chosen.get('l2')}; "
        f"baseline prior weight {head.prior.weight:g} utterances, clip {head.prior.clip:g}; "
        + (
            f"gate: the voice moves a score once {' or '.join(head.gate.features)} departs by "
            f"{head.gate.threshold:g} spreads (fully at {head.gate.threshold + head.gate.width:g})"
            if head.gate is not None
            else "no gate"
        ),
        f"- fitted on {training.get('utterances_fitted', '?')} utterances ({training.get('clips', '?')} "
        f"clips in {len(training.get('seeds', []))} call orders); text model at training: "
        f"{head.card.get('text_model_version', '?')}",
    ]
    metrics = head.card.get("metrics", {}).get("ravdess_13_18")
    if metrics:
        lines += [
            "",
            f"RAVDESS actors 13-18 ({metrics['clips']} clips, {metrics['heard']} heard by the ASR, "
            f"{metrics['fused_clips']} fused; the rest are each call's first utterance or unheard):",
            "",
            "| reading | macro-F1 | negative recall | neutral recall | positive recall | accuracy |",
            "|---|---|---|---|---|---|",
            _row("text only", metrics["text_only"]),
            _row("prosody only", metrics["prosody_only"]),
            _row("fused (served)", metrics["fused"]),
        ]
    sales = head.card.get("metrics", {}).get("sales_test_espeak")
    if sales:
        lines += [
            "",
            f"Sales test split spoken by espeak-ng (flat synthetic voices, {sales['lines']} labelled lines, "
            f"{sales['fused_lines']} fused): macro-F1 text only {sales['text_macro_f1']:.4f}, fused "
            f"{sales['fused_macro_f1']:.4f}.",
        ]
    lines += [
        "",
        "Limits: the MFCC summaries, the head's strongest inputs on RAVDESS, move with the words as much as "
        "with the voice, and RAVDESS's two sentences cannot teach the difference; the flat-voice anchors "
        "keep flat voices' macro-F1, not every line: single flat-voice scores still move (cross_validation's "
        "flat_swing_p99 where measured). So fusion is opt-in: `python -m scorer_service --fusion`, "
        "`callsense up --tone`, `callsense analyze --fusion`; without it the words alone are scored.",
    ]
    return "\n".join(lines) + "\n"


def _features(names: tuple[str, ...]) -> str:
    """The head's inputs, the MFCC ones counted rather than listed."""
    mfcc = [n for n in names if n.startswith("mfcc_")]
    rest = [n for n in names if not n.startswith("mfcc_")]
    return ", ".join(rest) + (
        f" and {len(mfcc)} MFCC summaries (means of c1-c12, spreads of c0-c12)" if mfcc else ""
    )


def _span(actors: Any) -> str:
    if not actors:
        return "?"
    return f"{min(actors):02d}-{max(actors):02d}"


def write_cards(head: FusionHead, fusion_card: Path, model_card: Path | None) -> None:
    fusion_card.write_text(section(head, "#"))
    if model_card is None or not model_card.is_file():
        return
    text = model_card.read_text()
    block = f"{BEGIN}\n{section(head)}{END}\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block
    model_card.write_text(text)
