"""`callsense retrain`: the served model fine-tuned on a tenant's own labelled calls, then promoted only when
a gate on held-out data shows it is at least as good.

One run, in a work folder of its own (kept: it is the audit trail):

1. The current version (the registry's, else the shipped model) and its card: the card's ``training``
   says how it was made (training sets, dev set, learning rate, batch size, seed, context), and a retrain
   repeats that recipe; its ``calibration`` and ``quantisation`` say how it was exported.
2. The tenant's labels (training/tenant_labels.py), split by call: 20 % of the calls held out for the gate,
   never trained on. The rest joins the recipe's training sets (repeated ``labels_repeat`` times: a few
   hundred lines among MELD's ten thousand would barely move the model).
3. Training (training/train.py) starts from ``--init`` when given, else from the current version's
   ``checkpoint/`` when it has one (a monthly refresh continues where the served model stopped: one epoch
   by default), else from the current version's own weights recovered from its INT8 file
   (training/recover.py; the shipped model has no checkpoint), else, when its graph cannot be read back,
   from the recipe's base model (a full retrain: the recipe's epochs). ``budget_steps`` caps the steps.
4. Export as ``callsense export`` does (training/ship.py): ONNX, the recipe's calibration, INT8 with the
   blocks the current model kept in fp32 (the same named blocks, or as many chosen by a sweep again). Its
   own INT8 check on dev refusing is not the end: the gate below measures and reports the same loss on
   every set.
5. The gate (training/gate.py): the current model's INT8, the candidate's INT8 and fp32 on the held-out
   labels, the sales test split and MELD dev. Passed: the candidate is added to the registry with its
   checkpoint, and promoted (scorers following the registry switch to it without a restart). Refused: it
   stays in the work folder, the registry untouched.
6. The report (JSON and Markdown) says which way and why, set by set.

Never trained on: any gate set, any ``:test`` split (public test splits are for papers, the sales test
split is the gate's), the held-out calls.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from callsense.model_files import read_card, write_json_atomically
from callsense.model_registry import ModelRegistry, ModelVersion
from training.data import (
    CORPORA,
    LABELS,
    SALES_SPLITS,
    LabelledUtterance,
    load_source,
    load_sources,
    shared_data_dir,
)
from training.evaluate import evaluate_examples, onnx_model, render_markdown, version_stamp
from training.gate import GateRule, GateVerdict, SetScores, SetVerdict, judge, markdown_table
from training.tenant_labels import (
    HeldOutSplit,
    TenantLabels,
    load_tenant_labels,
    split_by_call,
    write_label_file,
)

DEFAULT_GATE_SETS = ("sales:test", "meld:dev")
HELD_OUT_SET = "held-out labels"
REPORT_NAME = "retrain_report"
OUTCOMES = ("promoted", "passed", "refused")
"""promoted: passed and served; passed: passed, added, not promoted (--no-promote); refused."""


class RetrainInputError(ValueError):
    """Input a retrain cannot start from (labels, sets, registry); the message says what to fix."""


@dataclass
class RetrainConfig:
    labels: Path
    registry: Path
    work: Path
    lines: Path | None = None
    """The ``lines.jsonl`` of `callsense labels export` (default: beside ``labels``)."""
    base_sets: list[str] = field(default_factory=list)
    """Empty: the current model's training sets, from its card."""
    gate_sets: list[str] = field(default_factory=lambda: list(DEFAULT_GATE_SETS))
    held_out_share: float = 0.2
    labels_repeat: int = 3
    init: Path | None = None
    """A Hugging Face checkpoint to fine-tune; None: the current version's checkpoint, else its recovered
    weights, else the base model."""
    epochs: int = 0
    """0: one epoch from a checkpoint, the recipe's epochs from the base model."""
    budget_steps: int = 0
    learning_rate: float = 0.0
    """0: the recipe's."""
    keep_fp32_blocks: int = -1
    """-1: the blocks the current model kept in fp32 (the same named ones, or as many by a sweep); N: a
    sweep for N."""
    promote: bool = True
    rule: GateRule = field(default_factory=GateRule)
    shuffle_labels: bool = False
    """Debugging the gate: every training label permuted (a candidate made worse on purpose)."""
    threads: int = 2


@dataclass(frozen=True)
class RetrainResult:
    outcome: str
    verdict: GateVerdict
    candidate_version: str | None
    report: dict[str, Any]
    report_path: Path


@dataclass(frozen=True)
class Recipe:
    """How the current model was trained, as its card says (a missing entry: train.py's default)."""

    train: list[str]
    dev: list[str]
    base_model: str
    layers: int
    context: bool
    context_swap: float
    """With context: the share of long lines trained with an opposite-mood previous line (0: none)."""
    roles: bool
    """Trained with the speaker's role before the words (a retrain keeps it: the scorer reads the card)."""
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    calibrate_on: str | None
    """The set its temperature was fitted on; None: not calibrated."""
    class_bias: bool
    role_priors_on: str
    """The set its role priors were fitted on ("": it has none)."""
    keep_fp32_blocks: int
    """How many blocks its export's sensitivity sweep kept in fp32 (a retrain sweeps again)."""
    fp32_blocks: list[str]
    """The blocks its export kept in fp32 by name (no sweep): a retrain keeps the same."""
    int8_weights: str
    smooth_ffn_out: float
    """SmoothQuant's alpha on its feed-forward output projections (0: not smoothed): a retrain does alike."""
    quantisation_dev: str
    """The set its INT8 export was checked on (the export's own check; the gate measures every set)."""
    report_sets: list[str]


def recipe_of(card: dict[str, Any]) -> Recipe:
    from training.train import TrainConfig

    defaults = TrainConfig(output="")
    training = _section(card, "training")
    config = _section(training, "config")
    # A retrained model's config.train lists the tenant's label files of that run too; its base sets are
    # what the next retrain starts from (with the tenant's labels of its own run).
    retrained = _section(card, "retrain")
    calibration = _section(card, "calibration")
    quantisation = _section(card, "quantisation")
    temperature = calibration.get("temperature", 1.0)
    calibrated = bool(calibration) and (temperature != 1.0 or calibration.get("class_bias") is not None)
    dev = list(config.get("dev") or defaults.dev)
    swept = "dev_macro_f1_with_block_kept_fp32" in quantisation  # else the blocks were named
    return Recipe(
        train=list(retrained.get("base_sets") or config.get("train") or defaults.train),
        dev=dev,
        base_model=str(config.get("base_model") or ""),
        layers=int(config.get("layers") or 0),
        context=bool(card.get("uses_context", config.get("context", False))),
        context_swap=float(config.get("context_swap") or 0.0),
        roles=bool(card.get("uses_roles", config.get("roles", False))),
        epochs=int(config.get("epochs") or defaults.epochs),
        learning_rate=float(training.get("learning_rate") or config.get("learning_rate") or 0.0),
        batch_size=int(config.get("batch_size") or defaults.batch_size),
        seed=int(config.get("seed") or defaults.seed),
        calibrate_on=str(calibration.get("fitted_on") or dev[0]) if calibrated else None,
        class_bias=calibration.get("class_bias") is not None,
        role_priors_on=str(_section(card, "role_priors").get("fitted_on") or ""),
        keep_fp32_blocks=len(quantisation.get("fp32_blocks") or []) if swept else 0,
        fp32_blocks=[] if swept else list(quantisation.get("fp32_blocks") or []),
        int8_weights=str(quantisation.get("weights") or "s8-reduced"),
        smooth_ffn_out=float(_section(quantisation, "smooth_quant").get("alpha") or 0.0),
        quantisation_dev=str(quantisation.get("dev_set") or dev[0]),
        report_sets=[name for name, m in (card.get("metrics") or {}).items() if isinstance(m, dict)],
    )


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _check_sets(base_sets: Sequence[str], gate_sets: Sequence[str]) -> None:
    """RetrainInputError for a set that is not here, or one that must never be trained on."""
    for spec in base_sets:
        if spec.endswith(":test") or spec in gate_sets:
            raise RetrainInputError(
                f"{spec} cannot be a training set: test splits and the gate's sets ({', '.join(gate_sets)}) "
                "are never trained on"
            )
    missing = [spec for spec in [*base_sets, *gate_sets] if not _loadable(spec)]
    if missing:
        raise RetrainInputError(
            f"{', '.join(missing)}: not found (named corpora live under {shared_data_dir()}; set "
            "CALLSENSE_SHARED_DATA to the data folder)"
        )


def _shuffled(examples: Sequence[LabelledUtterance], seed: int) -> list[LabelledUtterance]:
    labels = [e.label for e in examples]
    random.Random(seed).shuffle(labels)
    return [
        LabelledUtterance(e.text, label, e.source, e.call_id, e.call_duration_s, e.previous_text)
        for e, label in zip(examples, labels, strict=True)
    ]


@dataclass
class _Run:
    """What one retrain learnt on its way, for the report."""

    config: RetrainConfig
    current: ModelVersion
    recipe: Recipe
    log: Callable[[str], None]
    base_sets: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 1)


def retrain(config: RetrainConfig, log: Callable[[str], None] = print) -> RetrainResult:
    """Run the whole retrain (see the module doc). RetrainInputError before anything is trained when the
    input is unusable; the registry is written only when the gate passes."""
    registry = ModelRegistry(config.registry)
    current = registry.current()
    registry.verify(current)
    card = read_card(current.directory)
    run = _Run(config, current, recipe_of(card), log)
    base_sets = run.base_sets = config.base_sets or run.recipe.train
    _check_sets(base_sets, config.gate_sets)
    try:
        labels = load_tenant_labels(config.labels, config.lines)
        split = split_by_call(labels.lines, config.held_out_share)
    except ValueError as exc:  # LabelError is one
        raise RetrainInputError(str(exc)) from None
    init, init_kind = _initial_checkpoint(registry, current, config, run.recipe)
    config.work.mkdir(parents=True, exist_ok=True)
    held_out_file = write_label_file(config.work / "labels.held-out.jsonl", split.held_out)
    log(
        f"current {current.version}; {len(labels.lines)} labelled lines of {labels.calls} calls: "
        f"{len(split.train)} to train on, {len(split.held_out)} of {len(split.held_out_calls)} calls held out"
    )

    started = time.monotonic()
    train_sets = _training_sets(run, base_sets, split)
    checkpoint, training = _train(run, train_sets, init, init_kind)
    run.timed("train_s", started)

    started = time.monotonic()
    candidate_dir, candidate_card, refusal = _export(run, checkpoint, labels, split, init_kind)
    run.timed("export_s", started)

    started = time.monotonic()
    scores = _evaluate(run, [held_out_file, *config.gate_sets], checkpoint)
    verdict = judge(scores, config.rule)
    if refusal is not None and verdict.passed:  # its own dev check refused what the gate let through
        verdict = GateVerdict(False, verdict.rule, verdict.sets, (refusal,))
    run.timed("gate_s", started)

    version = candidate_card["version"] if candidate_card is not None else None
    outcome = "refused"
    if verdict.passed and version is not None:
        registry.add(candidate_dir, checkpoint=checkpoint)
        outcome = "passed"
        served = registry.current().version
        if config.promote and served != current.version:
            # Judged against a model no longer served (promoted or rolled back by hand meanwhile): not
            # promoted over a decision a person made; the candidate waits in the registry.
            run.notes.append(f"not promoted: {served} became current during the retrain")
        elif config.promote:
            registry.promote(version)
            outcome = "promoted"
    log(f"gate {'passed' if verdict.passed else 'refused'}: {outcome}")
    for reason in verdict.reasons:
        log(f"  {reason}")
    report = _report(run, outcome, version, verdict, labels, split, base_sets, init, init_kind, training)
    path = write_report(config.work / f"{REPORT_NAME}.json", report)
    return RetrainResult(outcome, verdict, version, report, path)


def _initial_checkpoint(
    registry: ModelRegistry, current: ModelVersion, config: RetrainConfig, recipe: Recipe
) -> tuple[str, str]:
    """(what training starts from, which kind: "--init", "registry checkpoint" or "base model")."""
    if config.init is not None:
        if not (config.init / "config.json").is_file():
            raise RetrainInputError(f"--init {config.init}: not a Hugging Face checkpoint (no config.json)")
        return str(config.init), "--init"
    if current.checkpoint_dir is not None:
        return str(registry.verify_checkpoint(current)), "registry checkpoint"
    from training.recover import RecoveryError, recover_checkpoint
    from training.train import default_base_model

    base = recipe.base_model or default_base_model()
    try:  # the served weights themselves: a refresh, not a retrain from scratch
        recovered = recover_checkpoint(current.directory, Path(base), config.work / "recovered")
    except RecoveryError:
        return base, "base model"
    return str(recovered.output), "recovered from the served model"


def _training_sets(run: _Run, base_sets: list[str], split: HeldOutSplit) -> list[str]:
    work = run.config.work
    tenant = write_label_file(work / "labels.train.jsonl", split.train)
    sets = [*base_sets, *[str(tenant)] * run.config.labels_repeat]
    if not run.config.shuffle_labels:
        return sets
    loaded = load_sources(sets)
    shuffled = write_label_file(work / "train.shuffled.jsonl", _shuffled(loaded.examples, run.recipe.seed))
    run.notes.append("--shuffle-labels: every training label was permuted (a candidate worse on purpose)")
    return [str(shuffled)]


def _train(run: _Run, train_sets: list[str], init: str, init_kind: str) -> tuple[Path, dict[str, Any]]:
    from training.train import TrainConfig, Trainer

    recipe, config = run.recipe, run.config
    epochs = config.epochs or (recipe.epochs if init_kind == "base model" else 1)  # else: a refresh
    train_config = TrainConfig(
        output=str(config.work / "train"),
        train=train_sets,
        dev=recipe.dev,
        base_model=init,
        layers=recipe.layers if init_kind == "base model" else 0,
        context=recipe.context,
        context_swap=recipe.context_swap if recipe.context else 0.0,
        roles=recipe.roles,
        epochs=epochs,
        max_steps=config.budget_steps,
        batch_size=recipe.batch_size,
        learning_rate=config.learning_rate or recipe.learning_rate,
        seed=recipe.seed,
        threads=config.threads,
    )
    run.log(f"training from {init} ({init_kind}): {epochs} epoch(s), budget {config.budget_steps or 'none'}")
    summary = Trainer(train_config).run()
    summary["config"] = asdict(train_config)
    return config.work / "train" / "best", summary


def fp32_blocks_of(recipe: Recipe, keep_fp32_blocks: int) -> tuple[int, list[str]]:
    """What the candidate's export keeps in fp32: (blocks for a sensitivity sweep to choose, blocks named).

    ``keep_fp32_blocks`` is RetrainConfig's: -1 keeps what the current model kept (the same named blocks,
    or a sweep for as many as its own sweep chose); N asks for a sweep for N, whatever the current model
    named. One of the two is always empty: ship() refuses both at once."""
    if keep_fp32_blocks >= 0:
        return keep_fp32_blocks, []
    if recipe.fp32_blocks:
        return 0, list(recipe.fp32_blocks)
    return recipe.keep_fp32_blocks, []


def _export(
    run: _Run, checkpoint: Path, labels: TenantLabels, split: HeldOutSplit, init_kind: str
) -> tuple[Path, dict[str, Any] | None, str | None]:
    """(candidate folder, its card or None when its export was refused, the refusal in words)."""
    from training.export import QuantisationRejected
    from training.ship import ShipConfig, ship

    recipe, config = run.recipe, run.config
    destination = config.work / "candidate"
    keep, named = fp32_blocks_of(recipe, config.keep_fp32_blocks)
    ship_config = ShipConfig(
        checkpoint=checkpoint,
        destination=destination,
        workdir=config.work / "onnx",
        dev=recipe.quantisation_dev,
        report_sets=[s for s in recipe.report_sets if _loadable(s)] or [recipe.dev[0]],
        max_f1_drop=config.rule.max_int8_loss_points,
        calibrate=recipe.calibrate_on is not None,
        calibrate_on=recipe.calibrate_on or "",
        class_bias=recipe.class_bias,
        role_priors_on=recipe.role_priors_on if _loadable(recipe.role_priors_on) else "",
        keep_fp32_blocks=keep,
        fp32_blocks=named,
        int8_weights=recipe.int8_weights,
        smooth_ffn_out=recipe.smooth_ffn_out,
        notes=(
            f"Retrained by `callsense retrain` from {run.current.version} ({init_kind}) on the recipe's sets "
            f"plus {len(split.train)} of the tenant's labelled lines ({labels.kind}); "
            f"{len(split.held_out)} lines of {len(split.held_out_calls)} calls held out for the gate."
        ),
    )
    try:
        card = ship(ship_config)
    except QuantisationRejected as exc:
        return destination, None, f"its export refused it: {exc}"
    # A version of its own, named by its weights too: two retrains in one minute never collide.
    card["version"] = f"{version_stamp()}-retrain-{card['files']['model.int8.onnx']['sha256'][:8]}"
    card["retrain"] = {
        "from_version": run.current.version,
        "init": init_kind,
        "base_sets": run.base_sets,
        "tenant_labels": str(config.labels),
        "tenant_label_kind": labels.kind,
        "tenant_train_lines": len(split.train),
        "labels_repeat": config.labels_repeat,
        "held_out_lines": len(split.held_out),
        "held_out_calls": len(split.held_out_calls),
        "shuffled_labels": config.shuffle_labels,
    }
    (destination / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    (destination / "MODEL_CARD.md").write_text(render_markdown(card))
    return destination, card, None


def _loadable(spec: str) -> bool:
    """Whether a card's evaluation set is here to measure the candidate on (a corpus may be absent)."""
    if spec in CORPORA:
        return (shared_data_dir() / CORPORA[spec][1]).exists()
    name, _, split = spec.partition(":")
    return (name in ("sales", "sales-asr") and split in SALES_SPLITS) or Path(spec).is_file()


def _evaluate(run: _Run, sets: list[Path | str], checkpoint: Path) -> list[SetScores]:
    """Macro-F1 of the current INT8, the candidate INT8 and the candidate fp32 on each set."""
    onnx = run.config.work / "onnx"
    current_card = read_card(run.current.directory)
    current = onnx_model(
        run.current.model_path,
        run.current.directory / "tokenizer.json",
        bool(current_card.get("uses_context", False)),
        threads=run.config.threads,
        uses_roles=bool(current_card.get("uses_roles", False)),
    )
    tokenizer = checkpoint / "tokenizer.json"
    roles = run.recipe.roles
    candidate = onnx_model(
        onnx / "model.int8.onnx", tokenizer, run.recipe.context, run.config.threads, uses_roles=roles
    )
    candidate_fp32 = onnx_model(
        onnx / "model.fp32.onnx", tokenizer, run.recipe.context, run.config.threads, uses_roles=roles
    )
    scores = []
    for spec in sets:
        name = HELD_OUT_SET if isinstance(spec, Path) else spec
        try:
            examples = load_source(str(spec)).examples
        except FileNotFoundError as exc:
            raise RetrainInputError(f"gate set {spec}: {exc}") from None
        if not examples:
            scores.append(SetScores(name, 0, 0.0, 0.0, 0.0))
            continue
        figures = [
            float(evaluate_examples(m, examples)["macro_f1"]) for m in (current, candidate, candidate_fp32)
        ]
        scores.append(SetScores(name, len(examples), *figures))
        run.log(
            f"{name} (n={len(examples)}): current {figures[0]:.4f}, candidate {figures[1]:.4f} "
            f"(fp32 {figures[2]:.4f})"
        )
    return scores


def _report(
    run: _Run,
    outcome: str,
    version: str | None,
    verdict: GateVerdict,
    labels: TenantLabels,
    split: HeldOutSplit,
    base_sets: list[str],
    init: str,
    init_kind: str,
    training: dict[str, Any],
) -> dict[str, Any]:
    config = run.config
    return {
        "outcome": outcome,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "registry": str(config.registry),
        "current": {"version": run.current.version, "directory": str(run.current.directory)},
        "candidate": {
            "version": version,
            "directory": str(config.work / "candidate"),
            "added_to_registry": outcome in ("promoted", "passed"),
            "promoted": outcome == "promoted",
        },
        "gate": verdict.to_json(),
        "labels": {
            "file": str(config.labels),
            "kind": labels.kind,
            "lines": len(labels.lines),
            "calls": labels.calls,
            "undecided_left_out": labels.undecided,
            "unmatched_left_out": labels.unmatched,
            "train_lines": len(split.train),
            "held_out_lines": len(split.held_out),
            "held_out_calls": list(split.held_out_calls),
            "held_out_share": config.held_out_share,
            "per_class": {
                name: {
                    "train": sum(e.label == i for e in split.train),
                    "held_out": sum(e.label == i for e in split.held_out),
                }
                for i, name in enumerate(LABELS)
            },
        },
        "training": {
            "base_sets": base_sets,
            "labels_repeat": config.labels_repeat,
            "init": init,
            "init_kind": init_kind,
            "steps": training.get("steps"),
            "best_dev_macro_f1": training.get("best_dev_macro_f1"),
            "learning_rate": training.get("learning_rate"),
            "config": training.get("config"),
        },
        "timings_s": run.timings,
        "notes": run.notes,
        "metric": {"name": "callsense.retrain.outcomes", "attributes": {"outcome": outcome}},
    }


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """The report as JSON at ``path`` (".json" appended where it has another suffix) and as Markdown beside
    it (".md"); returns the JSON's path."""
    json_path = path if path.suffix == ".json" else path.with_name(path.name + ".json")
    write_json_atomically(json_path, report)
    json_path.with_suffix(".md").write_text(render_report(report), encoding="utf-8")
    return json_path


def render_report(report: dict[str, Any]) -> str:
    gate = report["gate"]
    candidate = report["candidate"]
    verdict = GateVerdict(
        gate["passed"],
        GateRule(**gate["rule"]),
        tuple(_set_verdict(s) for s in gate["sets"]),
        tuple(gate["reasons"]),
    )
    was = report["current"]["version"]
    headline = {
        "promoted": f"**Promoted**: {candidate['version']} is now served (was {was}).",
        "passed": f"**Passed, not promoted** (--no-promote): {candidate['version']} is in the registry.",
        "refused": f"**Refused**: {was} stays served.",
    }[report["outcome"]]
    labels, training = report["labels"], report["training"]
    lines = [
        f"# Retrain {report['at']}",
        "",
        headline,
        "",
        f"Gate: no set may drop more than {verdict.rule.max_drop_points} macro-F1 points against the current "
        f"model, and the candidate's INT8 may not lose more than {verdict.rule.max_int8_loss_points} points "
        "against its own fp32 export on any set.",
        "",
        *markdown_table(verdict),
        "",
    ]
    if verdict.reasons:
        lines += ["Why it was refused:", "", *[f"- {reason}" for reason in verdict.reasons], ""]
    lines += [
        "## Data",
        "",
        f"- labels: {labels['file']} ({labels['kind']}): {labels['lines']} lines of {labels['calls']} calls; "
        f"{labels['undecided_left_out']} undecided and {labels['unmatched_left_out']} unmatched lines "
        "left out",
        f"- trained on: {', '.join(training['base_sets'])} + {labels['train_lines']} tenant lines "
        f"x{training['labels_repeat']}",
        f"- held out: {labels['held_out_lines']} lines of {len(labels['held_out_calls'])} calls "
        f"({labels['held_out_share']:.0%} of the calls, by a hash of their id)",
        f"- from: {training['init']} ({training['init_kind']}); {training['steps']} steps, learning rate "
        f"{training['learning_rate']}",
        "",
        *[f"- note: {note}" for note in report["notes"]],
        f'Counted as `{report["metric"]["name"]}{{outcome="{report["outcome"]}"}}`.',
        "",
    ]
    return "\n".join(lines)


def _set_verdict(data: dict[str, Any]) -> SetVerdict:
    return SetVerdict(**(data | {"reasons": tuple(data["reasons"])}))
