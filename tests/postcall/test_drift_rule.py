"""The drift indicators (postcall/drift.py), the rule (postcall/drift_rule.py), the tenants' drift settings,
and the training baseline with the command that writes it (tools/drift_cli.py). No database here: the
nightly job against PostgreSQL is tests/postcall/test_drift.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from callsense.drift_settings import DriftSettings
from callsense.tenants import TenantConfigError, load_tenants_file
from callsense.tokenization import SHIPPED_MODEL_DIR
from postcall.drift import (
    DEFAULT_BASELINE_PATH,
    INDICATORS,
    DriftIndicators,
    ScoreTally,
    combine,
    load_baseline,
    text_indicators,
    words,
)
from postcall.drift_job import DriftJob
from postcall.drift_rule import assess
from scorer_service.inference import Prediction, SentimentInput, SentimentModel
from tests.support.sales_days import LineScores, day_calls
from tools.cli import main as callsense
from training.data import LabelledUtterance, load_sales

ROOT = Path(__file__).resolve().parents[2]


def test_words_are_lower_case_words_without_numbers_or_pii_masks() -> None:
    text = "Call me at [PHONE], it’s 5G-ready — DON'T wait: 2,000 seats, 15% off!"
    assert words(text) == ["call", "me", "at", "it's", "5g", "ready", "don't", "wait", "seats", "off"]


def test_text_and_score_indicators() -> None:
    vocabulary = frozenset({"the", "price", "is", "fine"})
    tally = text_indicators(
        ["The price is fine.", "", "   ", "The SD-WAN licence is fine."],
        lambda text: len(text.split()),
        vocabulary,
    )
    # Two texts (empty ones are utterances stored without text): 4 + 5 tokens, 4 + 6 words, of which
    # "the", "is" (twice each) are stop words and "sd", "wan", "licence" are outside the vocabulary.
    assert (tally.utterances, tally.tokens, tally.words) == (2, 9, 10)
    assert tally.indicators() == {"token_length": 4.5, "stop_word_ratio": 0.4, "oov_rate": 0.3}
    scores = ScoreTally()
    scores.add("neutral", 0.1, 0.7, 0.2)
    scores.add("positive", 0.0, 0.4, 0.6)
    scores.add("neutral", 0.2, 0.5, 0.3)
    scores.add("negative", 0.8, 0.1, 0.1)
    day = combine(4, tally, scores.indicators())
    assert (day.utterances, day.text_utterances) == (4, 2)
    assert (day.negative_share, day.neutral_share, day.positive_share) == (0.25, 0.5, 0.25)
    assert day.mean_confidence == pytest.approx((0.7 + 0.6 + 0.5 + 0.8) / 4)
    assert combine(
        0, text_indicators([], len, vocabulary), ScoreTally().indicators()
    ).as_dict() == dict.fromkeys(INDICATORS)


# --- the rule -----------------------------------------------------------------------------------------------

USUAL = DriftIndicators(
    utterances=100,
    text_utterances=100,
    token_length=15.0,
    stop_word_ratio=0.5,
    oov_rate=0.14,
    negative_share=0.1,
    neutral_share=0.7,
    positive_share=0.2,
    mean_confidence=0.7,
)
BASELINE = load_baseline()


def _history(days: int) -> list[DriftIndicators]:
    """Ordinary days that wobble: each indicator alternates +-1 point (a quarter token for the length)."""
    out = []
    for i in range(days):
        sign = 1 if i % 2 else -1
        out.append(
            replace(
                USUAL,
                token_length=15.0 + 0.25 * sign,
                **{n: getattr(USUAL, n) + 0.01 * sign for n in INDICATORS if n != "token_length"},
            )
        )
    return out


def _status(day: DriftIndicators, history: list[DriftIndicators]) -> dict[str, str]:
    return {c.name: c.status for c in assess(day, history, BASELINE, DriftSettings()).checks}


def test_a_tenant_is_learning_until_14_days_and_little_data_needs_20_utterances() -> None:
    far = replace(USUAL, oov_rate=0.4, token_length=25.0)
    assert set(_status(far, _history(13)).values()) == {"learning"}
    assert _status(far, _history(14))["oov_rate"] == "drift"
    small = replace(far, utterances=19, text_utterances=19)
    assert set(_status(small, _history(28)).values()) == {"little_data"}
    # Stored without text: the words' indicators have nothing to go on, the scores' do.
    textless = replace(USUAL, text_utterances=0, token_length=None, stop_word_ratio=None, oov_rate=None)
    statuses = _status(textless, _history(28))
    assert [statuses[n] for n in ("token_length", "stop_word_ratio", "oov_rate")] == ["little_data"] * 3
    assert statuses["mean_confidence"] == "usual"
    # Trailing days with too few utterances do not count towards the history.
    assert set(
        _status(far, [replace(d, utterances=5, text_utterances=5) for d in _history(28)]).values()
    ) == {"learning"}


def test_one_indicator_beyond_3_spreads_alone_is_unusual_not_a_drift() -> None:
    history = _history(28)  # sd about 1 point: 4 points away is beyond 3 spreads, and 4 / 3.4 > 20 %
    statuses = _status(replace(USUAL, oov_rate=0.18), history)
    assert statuses["oov_rate"] == "unusual" and "drift" not in statuses.values()
    # Two shares of the label mix move together (they sum to one with the third): still one family. A mix
    # that wobbles by 3 points a day, then moves 14 (4.6 spreads, and over a fifth of both training shares:
    # 0.64 neutral and 0.17 positive in the baseline of the model of 2026-12-05).
    wobbly = [
        replace(
            d, neutral_share=0.7 + (0.03 if i % 2 else -0.03), positive_share=0.2 - (0.03 if i % 2 else -0.03)
        )
        for i, d in enumerate(history)
    ]
    mix = _status(replace(USUAL, neutral_share=0.56, positive_share=0.34), wobbly)
    assert (mix["neutral_share"], mix["positive_share"]) == ("unusual", "unusual")
    assert "drift" not in mix.values()


def test_two_families_or_one_indicator_twice_as_far_make_a_drift() -> None:
    history = _history(28)
    # Words and label mix: each 4-5 spreads away and over a fifth of its training value.
    words_and_labels = _status(replace(USUAL, oov_rate=0.18, positive_share=0.25), history)
    assert (words_and_labels["oov_rate"], words_and_labels["positive_share"]) == ("drift", "drift")
    assert words_and_labels["token_length"] == "usual"
    # Confidence 6 points down is 6 spreads here, but under a fifth of the training text's 0.69: usual.
    assert _status(replace(USUAL, oov_rate=0.18, mean_confidence=0.64), history)["mean_confidence"] == "usual"
    alone = _status(replace(USUAL, oov_rate=0.22), history)  # 8 points: beyond 6 spreads
    assert alone["oov_rate"] == "drift"


def test_the_practical_bar_ignores_a_move_too_small_for_the_model() -> None:
    # A tenant whose confidence barely moves from day to day: 5 spreads away, but 0.05 is under 20 % of the
    # training text's 0.69 confidence, so it is not even unusual.
    history = [
        replace(d, mean_confidence=0.7 + (0.001 if i % 2 else -0.001)) for i, d in enumerate(_history(28))
    ]
    statuses = _status(replace(USUAL, mean_confidence=0.75, oov_rate=0.22), history)
    assert statuses["mean_confidence"] == "usual" and statuses["oov_rate"] == "drift"
    # Without a baseline the statistical bar alone decides: 5 spreads, unusual (alone, not yet a drift).
    checks = assess(replace(USUAL, mean_confidence=0.75), history, None, DriftSettings()).checks
    assert next(c for c in checks if c.name == "mean_confidence").status == "unusual"


def test_ordinary_days_never_drift_and_days_of_new_jargon_do() -> None:
    """A smaller run of the simulation the rule's docstring reports: 8 tenants, 45 days each (the last one
    of new jargon), 3 calls a day, through the real indicators, model scores and tokenizer."""
    job = DriftJob.load()
    scores = LineScores(SentimentModel.load())
    settings = DriftSettings()
    unusual_days = 0
    for tenant in (f"sim{n}" for n in range(8)):
        history: list[DriftIndicators] = []
        for i in range(45):
            day = date(2024, 1, 1) + timedelta(days=i)
            jargon = i == 44
            texts, tally = [], ScoreTally()
            for call in day_calls(tenant, day, jargon=jargon):
                for e in scores.events(call):
                    texts.append(e.text)
                    tally.add(e.label, e.p_negative, e.p_neutral, e.p_positive)
            indicators = combine(
                tally.utterances,
                text_indicators(texts, job.count_tokens, job.baseline.vocabulary),
                tally.indicators(),
            )
            verdict = assess(indicators, history[-settings.trailing_days :], job.baseline, settings)
            assert verdict.drifting == jargon, (tenant, day, verdict.checks)
            unusual_days += any(c.status == "unusual" for c in verdict.checks)
            history.append(indicators)
    # Single indicators beyond 3 spreads do happen on ordinary days: the corroboration is what keeps quiet.
    assert unusual_days > 0


# --- the tenants' settings ----------------------------------------------------------------------------------


def test_drift_settings_from_the_tenants_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        "[default.drift]\nsigma = 4\nmin_utterances = 50\n"
        "[tenants.acme.drift]\nalert = false\nbaseline_change = 0.3\n[tenants.globex]\ntimezone = 'UTC'\n"
    )
    config = load_tenants_file(path, {})
    assert config.for_tenant("acme").drift == DriftSettings(
        sigma=4.0, min_utterances=50, alert=False, baseline_change=0.3
    )
    assert (
        config.for_tenant("globex").drift
        == config.default.drift
        == DriftSettings(sigma=4.0, min_utterances=50)
    )
    assert (
        load_tenants_file(ROOT / "callsense" / "tenants.example.toml", {"ACME_CRM_WEBHOOK_SECRET": "x"})
        .for_tenant("acme")
        .drift
        == DriftSettings()
    )
    for text, message in [
        ("[default.drift]\nsigmaa = 3\n", "[default].drift: sigmaa: unknown key"),
        ("[default.drift]\nsigma = 'three'\n", "[default].drift: sigma: expected float"),
        ("[tenants.acme.drift]\nmin_history_days = 40\n", "[tenants.acme].drift: min_history_days (40)"),
        ("[default]\ndrift = 3\n", "[default].drift must be a table of DriftSettings fields"),
    ]:
        path.write_text(text)
        with pytest.raises(TenantConfigError, match=re.escape(message)):
            load_tenants_file(path, {})


# --- the baseline -------------------------------------------------------------------------------------------


# The served model's run read the corpus's first four batches: the calls of writer files w1-w20.
SERVED_RUN_LAST_WRITER = 20


def _sales_train_lines(last_writer: int | None = None) -> int:
    """The sales lines a run reads with sales:train twice and sales-asr:train, of the calls of writer files
    w1 up to ``last_writer`` (all of them by default)."""

    def in_run(example: LabelledUtterance) -> bool:
        return last_writer is None or int(example.call_id[1:].split("-")[0]) <= last_writer

    written = [e for e in load_sales("train").examples if in_run(e)]
    heard = [e for e in load_sales("train", asr=True).examples if in_run(e)]
    return 2 * len(written) + len(heard)


def test_the_shipped_baseline_is_small_and_names_its_model_and_text() -> None:
    card = json.loads((SHIPPED_MODEL_DIR / "model_card.json").read_text())
    # Its vocabulary grows with the training text (101 KB with the sales corpus's third batch, 160 KB with
    # the tweets of 2026-12-07, 169 KB with the fifth batch): small means a file that ships in the image and
    # loads in milliseconds, not a dump of the corpora.
    assert DEFAULT_BASELINE_PATH.stat().st_size < 200_000
    baseline = load_baseline()
    assert baseline.model_version == card["version"]
    named = ["meld:train", "dailydialog:train", "sales:train", "sales:train", "sales-asr:train"]
    named += ["tweeteval-emotion:train", "tweeteval:val-fit", "tweeteval:val-fit"]
    assert list(baseline.sources) == card["training"]["config"]["train"] == named
    assert baseline.command.startswith("callsense drift baseline --sources meld:train dailydialog:train")
    # The run read the sales sets (sales:train twice, sales-asr:train) of the corpus's first four batches
    # (calls w1-w20: the fifth came after it), 11,257 lines replayed from meld:train, dailydialog:train and
    # tweeteval-emotion:train (a local file: training.config.as_run) and TweetEval validation's fit half
    # twice. The baseline reads the named sets whole as they stand now (five batches), so it holds those and
    # more.
    assert (
        card["training"]["train_examples"] == _sales_train_lines(SERVED_RUN_LAST_WRITER) + 11_257 + 2 * 1_000
    )
    # meld:train 9,989 and dailydialog:train 7,840 lines, whole; tweeteval-emotion:train 3,257; the fit half
    # twice
    assert baseline.lines == _sales_train_lines() + 17_829 + 3_257 + 2 * 1_000
    assert 2_000 < len(baseline.vocabulary) < 20_000 and {"price", "thanks", "don't"} <= baseline.vocabulary
    # The sales corpus is training text now: its everyday words are no drift.
    assert {"budget", "onboarding", "procurement"} <= baseline.vocabulary
    assert all(baseline.value(name) is not None for name in INDICATORS)


def test_the_baseline_command_on_a_small_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = tmp_path / "lines.jsonl"
    texts = ["Thanks, the price is fine.", "The price is fine for us.", "Can we talk about onboarding?"]
    lines.write_text("".join(json.dumps({"text": t, "label": "neutral"}) + "\n" for t in texts))
    out = tmp_path / "baseline.json"
    assert callsense(["drift", "baseline", "--sources", str(lines), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    # Words seen twice or more: "the", "price", "is", "fine" (ties by the word).
    assert written["vocabulary"] == ["fine", "is", "price", "the"]
    assert written["command"] == f"callsense drift baseline --sources {lines} --min-count 2 --top 20000"
    baseline = load_baseline(out)
    # 16 words (5 + 6 + 5), 8 of them in the vocabulary; the model's tokens and its scores of the lines.
    assert baseline.value("oov_rate") == pytest.approx(8 / 16)
    model = SentimentModel.load()
    tokens = [len(model.tokenizer.encode(t).input_ids) - 2 for t in texts]
    assert baseline.value("token_length") == pytest.approx(sum(tokens) / 3)
    predictions = [p for p in model.predict([SentimentInput(t) for t in texts]) if isinstance(p, Prediction)]
    assert baseline.indicators.utterances == len(predictions) == 3
    confidence = sum(max(p.p_negative, p.p_neutral, p.p_positive) for p in predictions) / 3
    assert baseline.value("mean_confidence") == pytest.approx(confidence)
    assert '"vocabulary": 4' in capsys.readouterr().out
    # A corpus that is not there: exit 2, saying so.
    assert callsense(["drift", "baseline", "--sources", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2


@pytest.mark.slow
@pytest.mark.evaluation
def test_the_shipped_baseline_is_what_the_command_writes(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    assert callsense(["drift", "baseline", "--out", str(out)]) == 0  # the defaults: the card's training text
    written, shipped = json.loads(out.read_text()), json.loads(DEFAULT_BASELINE_PATH.read_text())
    # The model's indicators come from int8 kernels whose rounding differs by CPU (AVX2 against AVX-512
    # VNNI moved the mean confidence in the fifth decimal and can flip an utterance or two between
    # classes), so those are compared within that much; everything read from the text must match exactly.
    model_indicators = {
        "mean_confidence": 1e-3,
        "negative_share": 3e-3,
        "neutral_share": 3e-3,
        "positive_share": 3e-3,
    }
    written_indicators, shipped_indicators = written.pop("indicators"), shipped.pop("indicators")
    assert written == shipped
    assert written_indicators.keys() == shipped_indicators.keys()
    for name, value in shipped_indicators.items():
        assert written_indicators[name] == pytest.approx(value, abs=model_indicators.get(name, 0.0)), name
