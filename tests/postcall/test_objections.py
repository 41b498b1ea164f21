"""Objection tags: rules + the fine-tuned classifier (the shipped adapters on the real MiniLM, real sentiment
scores), buyer language including the field trial's failures, the LLM tagger against a real local HTTP
server, and its fallback. The tagger's figures on the sales corpus: tests/training/test_objection_eval.py."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from callsense.domain import UtteranceScore
from callsense.report import TAGS, ObjectionTag
from postcall.objection_encoder import ADAPTER_PATH, ObjectionModelError, adapter_files
from postcall.objections import (
    EXAMPLES_PATH,
    LlmObjectionTagger,
    LlmSettings,
    LocalObjectionTagger,
    TaggerSettings,
    load_examples,
    tagger_from_env,
)
from scorer_service.inference import DEFAULT_MODEL, SentimentModel
from tests.support.scored_lines import score_lines

# Held-out customer sentences, none of them in objection_examples.json, written for the first tagger
# (nearest examples): HELD_OUT_A was looked at while its thresholds were chosen, HELD_OUT_B written after
# and evaluated once (macro precision 0.97, recall 0.69 then). Some labels predate the rubric of
# docs/labelling.md (two tags on a line; "We currently run everything through Salesforce" is a fact there).
# The learned tagger (issue 12) was chosen on the sales corpus, never on these: on them it measured macro
# precision 0.90, recall 0.56 (short explicit sentences, each with unrelated neighbours as context).
HELD_OUT_A: list[tuple[str, set[str]]] = [
    ("Wow, that's a lot more than I thought it would be.", {"pricing pushback"}),
    ("We can't spend that kind of money on software.", {"pricing pushback"}),
    ("Your price is almost double what we pay now.", {"pricing pushback"}),
    ("Could you do better on the price? That's too steep for us.", {"pricing pushback"}),
    ("There's no way finance will sign off on that amount.", {"pricing pushback", "authority"}),
    ("The per-seat pricing kills it for us.", {"pricing pushback"}),
    ("Honestly it's just too expensive.", {"pricing pushback"}),
    ("That's above what we have set aside for this year.", {"pricing pushback"}),
    ("We won't be ready to look at this before spring.", {"timeline concern"}),
    ("Right now isn't a good moment, we're swamped.", {"timeline concern"}),
    ("Let's talk again in the new year.", {"timeline concern"}),
    ("Six weeks to set up is longer than we hoped.", {"timeline concern"}),
    ("Everything is on pause until the merger closes.", {"timeline concern"}),
    ("Ask me again next quarter.", {"timeline concern"}),
    ("We currently run everything through Salesforce.", {"competitor mention"}),
    ("Another provider pitched us last month.", {"competitor mention"}),
    ("What makes you better than HubSpot?", {"competitor mention"}),
    ("We're also looking at a few other options.", {"competitor mention"}),
    ("Our existing vendor gives us that for free.", {"competitor mention"}),
    ("Gong already records our calls.", {"competitor mention"}),
    ("I'll have to check with my manager before we decide.", {"authority"}),
    ("My boss needs to see this first.", {"authority"}),
    ("Our finance director approves all new spending.", {"authority"}),
    ("That would need sign-off from our CEO.", {"authority"}),
    ("I'll take it to the team and get back to you.", {"authority"}),
    ("The head of sales makes these decisions, not me.", {"authority"}),
    ("We're fine with what we have, thanks.", {"no need"}),
    ("I don't think this is something we need.", {"no need"}),
    ("Our team doesn't have that problem.", {"no need"}),
    ("We get by without it just fine.", {"no need"}),
    ("To be honest it's not really on our radar.", {"no need"}),
    ("I'm not sure we'd get any use out of it.", {"no need"}),
    ("Could you explain how the pricing tiers work?", set()),
    ("What's included in the basic plan?", set()),
    ("That price sounds reasonable.", set()),
    ("We'd love to get going as soon as possible.", set()),
    ("I make the purchasing decisions for the team.", set()),
    ("Yes, we need exactly this kind of reporting.", set()),
    ("How does it compare on security?", set()),
    ("Thanks, this was a great demo.", set()),
    ("We have around two hundred customers.", set()),
    ("Can it export to Excel?", set()),
    ("Let me grab a pen.", set()),
    ("What time works for you next week?", set()),
    ("Our team is based in Berlin.", set()),
    ("That feature would save us a lot of time.", set()),
    ("Good morning, how are you?", set()),
    ("Okay, and what about the API?", set()),
]
HELD_OUT_B: list[tuple[str, set[str]]] = [
    ("Thirty grand is just not realistic for a company like ours.", {"pricing pushback"}),
    ("If the price came down we might consider it.", {"pricing pushback"}),
    ("We'd be paying for features we'll never use at that cost.", {"pricing pushback"}),
    ("That quote blew past what I had in mind.", {"pricing pushback"}),
    (
        "Our fiscal year just started and the budget is already allocated.",
        {"pricing pushback", "timeline concern"},
    ),
    ("We're about to go into our peak season, so not before October.", {"timeline concern"}),
    ("Onboarding in two weeks is unrealistic for us.", {"timeline concern"}),
    ("Can we push this conversation to next year?", {"timeline concern"}),
    ("We're moving offices this quarter, so the timing is tricky.", {"timeline concern"}),
    ("We looked at Pipedrive too and it was cheaper.", {"competitor mention", "pricing pushback"}),
    ("Our sister company uses a different vendor for this.", {"competitor mention"}),
    ("The tool we already pay for has a similar dashboard.", {"competitor mention"}),
    ("We're halfway through a trial with another product.", {"competitor mention"}),
    ("I'd need to get approval from purchasing first.", {"authority"}),
    ("It's up to our COO in the end.", {"authority"}),
    ("I'll need to loop in our CTO before we can commit.", {"authority"}),
    ("Our regional director would have to agree.", {"authority"}),
    ("We just don't see a need for it at the moment.", {"no need"}),
    ("Our spreadsheets do the job well enough.", {"no need"}),
    ("I don't think this solves anything for us.", {"no need"}),
    ("That's not really a pain for our team.", {"no need"}),
    ("What discounts do you have for non-profits?", set()),
    ("How soon could we have it running?", set()),
    ("I'll be the one approving this, so talk to me.", set()),
    ("We compared a few tools and yours looks the best.", set()),
    ("The cost is fine if it does what you say.", set()),
    ("Can you send the invoice to our accounts team?", set()),
    ("We've got about thirty reps across three regions.", set()),
    ("Do you integrate with Zoom?", set()),
    ("Great, I'm looking forward to the pilot.", set()),
    ("Could you go over the contract terms again?", set()),
    ("Our calls are mostly in English.", set()),
]


@pytest.fixture(scope="module")
def sentiment() -> SentimentModel:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL} not found; objection tests score with it")
    return SentimentModel.load()


@pytest.fixture(scope="module")
def tagger() -> LocalObjectionTagger:
    return LocalObjectionTagger()


def scored_call(model: SentimentModel, lines: Sequence[tuple[str, int, str]]) -> list[UtteranceScore]:
    """(channel, start second, text) lines as the gateway would store them, scored by the shipped model."""
    return score_lines(model, lines, call_id="call-objections", utterance_ms=4000)


def event(text: str, score: float, channel: str = "customer", utterance_id: int = 1) -> UtteranceScore:
    """An utterance with a chosen score, for tests about the rules of the score itself."""
    return UtteranceScore(
        call_id="c",
        utterance_id=utterance_id,
        channel=channel,  # type: ignore[arg-type]
        start_ms=1000,
        end_ms=3000,
        text=text,
        label="neutral",
        p_negative=0.0,
        p_neutral=1.0,
        p_positive=0.0,
        score=score,
        model_version="test",
    )


def tags_by_utterance(tags: Sequence[ObjectionTag]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for tag in tags:
        found.setdefault(tag.utterance_id, set()).add(tag.tag)
    return found


# ------------------------------------------------------------------------------------------------ quality


def precision_recall(
    predicted: Sequence[set[str]], gold: Sequence[set[str]]
) -> dict[str, tuple[float, float]]:
    result: dict[str, tuple[float, float]] = {}
    for tag in TAGS:
        tp = sum(tag in p and tag in g for p, g in zip(predicted, gold, strict=True))
        fp = sum(tag in p and tag not in g for p, g in zip(predicted, gold, strict=True))
        fn = sum(tag not in p and tag in g for p, g in zip(predicted, gold, strict=True))
        result[tag] = (tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0)
    return result


def test_held_out_quality(sentiment: SentimentModel, tagger: LocalObjectionTagger) -> None:
    held_out = HELD_OUT_A + HELD_OUT_B
    events = scored_call(sentiment, [("customer", 10 * i, text) for i, (text, _) in enumerate(held_out)])
    found = tags_by_utterance(tagger.tag(events))
    predicted = [found.get(i, set()) for i in range(len(held_out))]
    scores = precision_recall(predicted, [gold for _, gold in held_out])
    macro_precision = sum(p for p, _ in scores.values()) / len(TAGS)
    macro_recall = sum(r for _, r in scores.values()) / len(TAGS)
    report = ", ".join(f"{tag}: P {p:.2f} R {r:.2f}" for tag, (p, r) in scores.items())
    # Tags feed a manager's summary and the CRM: a wrong tag costs more than a missed one. These sentences
    # guard precision on buyer language the corpus's writer did not write; recall is judged on the corpus.
    assert macro_precision >= 0.85, report
    assert macro_recall >= 0.50, report
    assert all(p >= 0.7 and r >= 0.25 for p, r in scores.values()), report
    # Plain sales talk stays untagged.
    false_alarms = [text for (text, gold), p in zip(held_out, predicted, strict=True) if not gold and p]
    assert len(false_alarms) <= 2, false_alarms


def test_held_out_sentences_are_not_examples() -> None:
    examples = {s.lower() for sentences in load_examples().values() for s in sentences}
    assert not examples & {text.lower() for text, _ in HELD_OUT_A + HELD_OUT_B}


@pytest.mark.xfail(
    strict=True,
    reason="known gap of the fine-tuned tagger (2026-12-06): four objections in one turn share one context "
    "(the rep's price before, the rep's 'no need to rush' after); the Pipedrive line reads competitor 0.51 "
    "and the CFO line authority 0.38 (timeline 0.59), under the 0.8 threshold; price and timing are found",
)
def test_scripted_call_yields_expected_tags(sentiment: SentimentModel, tagger: LocalObjectionTagger) -> None:
    call = [
        ("agent", 0, "Thanks for joining, shall I walk you through the platform?"),
        ("customer", 6, "Yes please, we've been curious about it."),
        ("agent", 30, "The team plan is twelve hundred a month, which is very expensive for some."),
        ("customer", 45, "Honestly that's too expensive for us, we can't afford it."),
        ("customer", 60, "We're already using Pipedrive for most of this."),
        ("customer", 80, "And I'd need my CFO to approve anything like this."),
        ("customer", 100, "Plus our busy season starts soon, so the timing isn't right."),
        ("agent", 120, "We don't really need an answer today, there's no need to rush."),
        ("customer", 130, "Thanks, it was nice talking to you."),
    ]
    tags = tagger.tag(scored_call(sentiment, call))
    found = tags_by_utterance(tags)
    assert "pricing pushback" in found.get(3, set())
    assert "competitor mention" in found.get(4, set())
    assert "authority" in found.get(5, set())
    assert "timeline concern" in found.get(6, set())
    # The agent's price and "no need" are not objections; pleasantries are not either.
    assert not {0, 2, 7} & set(found), found
    assert not {1, 8} & set(found), found
    assert [t.start_ms for t in tags] == sorted(t.start_ms for t in tags)
    assert all(t.channel == "customer" and t.source in ("rules", "model") for t in tags)


# ------------------------------------------------------------------------------------------ buyer language
# Issue 12: buyers are polite and indirect; a topic mentioned is no objection. Each customer line comes in a
# call, with the rep's lines around it, as the post-call worker sees it. None of these sentences is in
# objection_examples.json or the sales corpus.

DEMO = "So that's the coaching view: every call scored, with the moments that matter flagged."


def customer_tags(
    sentiment: SentimentModel, tagger: LocalObjectionTagger, lines: Sequence[tuple[str, int, str]]
) -> dict[int, set[str]]:
    tags = tagger.tag(scored_call(sentiment, lines))
    assert all(lines[t.utterance_id][0] == "customer" for t in tags)
    return tags_by_utterance(tags)


@pytest.mark.parametrize(
    "lines",
    [
        [
            ("agent", 0, "How's the team doing this year?"),
            (
                "customer",
                5,
                "Honestly, it's been a great year. We've grown so fast, we went from twelve to forty reps in "
                "six months.",
            ),
            ("agent", 15, "That's fantastic growth."),
        ],
        [
            (
                "customer",
                0,
                "Our team is growing really quickly, we've doubled since spring and it's been amazing.",
            )
        ],
        [
            ("agent", 0, "How long does it usually take your new reps to get up to speed?"),
            ("customer", 5, "We're hiring faster than we can onboard, which is a nice problem to have."),
        ],
    ],
)
def test_a_fast_growing_team_is_no_timeline_concern(
    sentiment: SentimentModel, tagger: LocalObjectionTagger, lines: list[tuple[str, int, str]]
) -> None:
    # Field trial: "timeline concern" on a customer praising how fast their team grows.
    assert customer_tags(sentiment, tagger, lines) == {}


@pytest.mark.parametrize(
    ("praise", "question"),
    [
        ("I love the idea.", "What would it cost for forty seats?"),
        ("Love it, honestly.", "So what are we looking at on price?"),
        ("This is brilliant, my managers will love it.", "How much is it per seat?"),
    ],
)
def test_a_price_question_after_loving_the_idea_is_no_pushback(
    sentiment: SentimentModel, tagger: LocalObjectionTagger, praise: str, question: str
) -> None:
    # Field trial: "pricing pushback" on a customer who had just said they loved the idea.
    lines = [("agent", 0, DEMO), ("customer", 10, praise), ("customer", 13, question)]
    assert customer_tags(sentiment, tagger, lines) == {}


def test_loving_the_idea_and_a_price_question_in_one_segment(
    sentiment: SentimentModel, tagger: LocalObjectionTagger
) -> None:
    lines = [("agent", 0, DEMO), ("customer", 10, "I love the idea. What would it cost for forty seats?")]
    assert customer_tags(sentiment, tagger, lines) == {}


@pytest.mark.parametrize(
    ("rep", "customer", "tag"),
    [
        (
            "For forty seats that comes to about thirty-eight thousand a year.",
            "Hm. That's well over what we budgeted, I'm afraid.",
            "pricing pushback",
        ),
        pytest.param(
            "Would you be the one signing the order form?",
            "Not quite. We'd need sign-off from our VP before anything goes ahead.",
            "authority",
            marks=pytest.mark.xfail(
                strict=True,
                reason="known gap of the fine-tuned tagger: 'before anything goes ahead' reads as timing "
                "(timeline concern 0.69 after the rep's question, 0.86 alone; authority 0.16 / 0.11); the "
                "phrase rule still gives authority, the model adds the wrong second tag",
            ),
        ),
        (
            "The pipeline view gives you every deal by stage, with forecasts.",
            "We're already using HubSpot for that, to be honest.",
            "competitor mention",
        ),
        pytest.param(
            DEMO,
            "Really enjoyed the demo, but at that price it's a non-starter for us.",
            "pricing pushback",
            marks=pytest.mark.xfail(
                strict=True,
                reason="known gap: the sentiment model hears this praise-then-price line as positive (0.72), "
                "and the tagger reads the model's stance (pricing p 0.02 after the demo line); the tagger "
                "without stance features tagged it, but missed more of the corpus's polite objections",
            ),
        ),
        (
            "Could we get the pilot going in March?",
            "March is tough. We're in the middle of our audit, so realistically not before summer.",
            "timeline concern",
        ),
        (
            "Does this solve the reporting headache you mentioned?",
            "Honestly, our spreadsheet does the job. I'm not sure we need this.",
            "no need",
        ),
    ],
)
def test_polite_objections(
    sentiment: SentimentModel, tagger: LocalObjectionTagger, rep: str, customer: str, tag: str
) -> None:
    assert customer_tags(sentiment, tagger, [("agent", 0, rep), ("customer", 5, customer)]) == {1: {tag}}
    # ...and said out of the blue, without the rep's line before it.
    assert customer_tags(sentiment, tagger, [("customer", 0, customer)]) == {0: {tag}}


@pytest.mark.parametrize(
    "lines",
    [
        [
            ("agent", 0, "What are you using to track your pipeline at the moment?"),
            ("customer", 5, "We use HubSpot today."),
            ("agent", 10, "Got it, and how many reps are on it?"),
        ],
        pytest.param(
            [
                ("agent", 0, "The annual plan is twenty-two thousand."),
                ("customer", 5, "That's within what we budgeted, so no problem there."),
            ],
            marks=pytest.mark.xfail(
                strict=True,
                reason="known gap: after a quoted price this reads as pricing pushback (p 0.98 with the "
                "fine-tuned tagger; 0.69 with the logistic regression before it); said alone, 0.42, no tag. "
                "The corpus's money mentions: 7 false tags of 79 (10 before)",
            ),
        ),
    ],
)
def test_a_mention_is_no_objection(
    sentiment: SentimentModel, tagger: LocalObjectionTagger, lines: list[tuple[str, int, str]]
) -> None:
    # docs/labelling.md: "we use HubSpot today" is a fact, no tag; money mentioned happily is no pushback.
    assert customer_tags(sentiment, tagger, lines) == {}


def test_a_segment_can_carry_several_tags(tagger: LocalObjectionTagger) -> None:
    tags = tagger.tag([event("We looked at HubSpot and honestly yours is too expensive.", 0.2)])
    assert {(t.tag, t.source) for t in tags} == {
        ("competitor mention", "model"),
        ("pricing pushback", "rules"),
    }
    assert [t.confidence for t in tags if t.source == "rules"] == [0.9]


def test_only_the_customer_side_is_tagged(tagger: LocalObjectionTagger) -> None:
    text = "That's way too expensive, we can't afford it."
    assert tagger.tag([event(text, 0.2, channel="agent")]) == []
    mixed = tagger.tag([event(text, 0.2, channel="mixed")])  # a mono line: the customer is in the mix
    assert [t.tag for t in mixed] == ["pricing pushback"] and mixed[0].channel == "mixed"
    assert tagger.tag([]) == [] and tagger.tag([event("   ", 0.2)]) == []


def test_a_rule_phrase_said_happily_is_no_objection(tagger: LocalObjectionTagger) -> None:
    # "not right now" is a timeline rule; said happily it is no objection, for the rule or the model...
    assert tagger.tag([event("Honestly, not right now, we're ready!", 0.95)]) == []
    assert [(t.tag, t.source) for t in tagger.tag([event("Honestly, not right now.", 0.4)])] == [
        ("timeline concern", "rules")
    ]
    # ...while the model's own tags do not depend on the score: "the demo was great, but the price kills
    # it" is pushback however warmly the sentiment model hears it (the last word decides, docs/labelling.md).
    for score in (0.3, 0.9):
        tags = tagger.tag([event("We might wait a bit on this.", score)])
        assert [(t.tag, t.source) for t in tags] == [("timeline concern", "model")]
        assert tagger.model.threshold <= tags[0].confidence < 1.0


def test_repeated_utterances_are_tagged_once(tagger: LocalObjectionTagger) -> None:
    same = event("Honestly it's far too expensive for us.", 0.2)
    assert len(tagger.tag([same, same])) == 1


# ------------------------------------------------------------------------------------------------ data


def test_objection_tag_json_and_validation() -> None:
    tag = ObjectionTag("authority", 7, "customer", 1000, 2000, "ask my boss", 0.9, "rules")
    assert tag.to_json() == {
        "tag": "authority",
        "utterance_id": 7,
        "channel": "customer",
        "start_ms": 1000,
        "end_ms": 2000,
        "text": "ask my boss",
        "confidence": 0.9,
        "source": "rules",
    }
    with pytest.raises(ValueError, match="unknown objection tag 'price'"):
        ObjectionTag("price", 7, "customer", 1000, 2000, "x", 0.9, "rules")
    with pytest.raises(ValueError, match="confidence"):
        ObjectionTag("authority", 7, "customer", 1000, 2000, "x", 1.5, "rules")


def test_examples_and_adapter_files_are_checked(tmp_path: Path) -> None:
    assert set(load_examples()) == {*TAGS, "none"}
    broken = json.loads(EXAMPLES_PATH.read_text())
    del broken["examples"]["authority"]
    path = tmp_path / "examples.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="examples.authority"):
        load_examples(path)
    # At construction: a broken adapter file fails at start-up (the cases: test_objection_encoder.py).
    with pytest.raises(ObjectionModelError, match="absent.safetensors: cannot read"):
        LocalObjectionTagger(model_path=tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="rule_max_score"):
        TaggerSettings(rule_max_score=2)


# -------------------------------------------------------------------------------------------------- LLM


@dataclass
class FakeOpenAI:
    """What the local OpenAI-compatible server answers and what it was asked."""

    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def content_for(self, segments: list[dict[str, Any]]) -> str:
        tags = []
        for segment in segments:
            text = segment["text"].lower()
            if "expensive" in text:
                tags.append(
                    {"utterance_id": segment["utterance_id"], "tag": "pricing pushback", "confidence": 0.8}
                )
            if "salesforce" in text:
                tags.append({"utterance_id": segment["utterance_id"], "tag": "competitor mention"})
        if self.mode == "unknown tag":
            tags.append({"utterance_id": segments[0]["utterance_id"], "tag": "grumpy"})
        if self.mode == "invented utterance":
            tags.append({"utterance_id": 999, "tag": "authority"})
        body = json.dumps({"tags": tags})
        return {"fenced": f"```json\n{body}\n```", "not json": "Sure! Here are the tags: pricing."}.get(
            self.mode, body
        )


@pytest.fixture
def llm_server() -> Iterator[tuple[str, FakeOpenAI]]:
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.headers.append(dict(self.headers))
            state.paths.append(self.path)
            if state.mode == "error":
                self.send_response(500)
                self.end_headers()
                return
            segments = json.loads(body["messages"][-1]["content"])["segments"]
            reply = {"choices": [{"message": {"role": "assistant", "content": state.content_for(segments)}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


LLM_CALL = [
    event("Our price is forty thousand, is that expensive for you?", 0.5, channel="agent", utterance_id=0),
    event("Yes, that's far too expensive.", 0.2, utterance_id=1),
    event("We already pay for Salesforce.", 0.4, utterance_id=2),
    event("Okay, send the proposal.", 0.6, utterance_id=3),
]


def test_llm_tags(llm_server: tuple[str, FakeOpenAI], tagger: LocalObjectionTagger) -> None:
    url, state = llm_server
    llm = LlmObjectionTagger(LlmSettings(url, "tagger-7b", api_key="sk-test", segments_per_request=2), tagger)
    tags = llm.tag(LLM_CALL)
    assert [(t.utterance_id, t.tag, t.source, t.confidence) for t in tags] == [
        (1, "pricing pushback", "llm", 0.8),
        (2, "competitor mention", "llm", 0.8),
    ]
    assert state.paths == ["/v1/chat/completions"] * 2  # three customer segments, two per request
    assert state.requests[0]["model"] == "tagger-7b"
    assert state.headers[0]["Authorization"] == "Bearer sk-test"
    sent = [json.loads(r["messages"][-1]["content"])["segments"] for r in state.requests]
    assert [s["utterance_id"] for chunk in sent for s in chunk] == [1, 2, 3]  # never the agent's line


def test_llm_reply_in_a_code_fence_is_accepted(llm_server: tuple[str, FakeOpenAI]) -> None:
    url, state = llm_server
    state.mode = "fenced"
    tags = LlmObjectionTagger(LlmSettings(url + "/chat/completions", "m")).tag(LLM_CALL)
    assert [t.tag for t in tags] == ["pricing pushback", "competitor mention"]
    assert state.paths == ["/v1/chat/completions"] and "Authorization" not in state.headers[0]


@pytest.mark.parametrize("mode", ["error", "not json", "unknown tag", "invented utterance"])
def test_llm_failure_falls_back_to_local_tags(
    llm_server: tuple[str, FakeOpenAI],
    tagger: LocalObjectionTagger,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, state = llm_server
    state.mode = mode
    with caplog.at_level(logging.WARNING, logger="postcall.objections"):
        tags = LlmObjectionTagger(LlmSettings(url, "m"), tagger).tag(LLM_CALL)
    assert tags == tagger.tag(LLM_CALL) and tags
    assert all(t.source in ("rules", "model") for t in tags)
    assert len(state.requests) == 1
    assert "using the local tagger" in caplog.text


def test_llm_unreachable_falls_back(tagger: LocalObjectionTagger, caplog: pytest.LogCaptureFixture) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    with caplog.at_level(logging.WARNING, logger="postcall.objections"):
        tags = LlmObjectionTagger(LlmSettings(f"http://127.0.0.1:{port}/v1", "m", timeout_s=2), tagger).tag(
            LLM_CALL
        )
    assert tags == tagger.tag(LLM_CALL)
    assert "ConnectError" in caplog.text


def test_tagger_from_env() -> None:
    assert isinstance(tagger_from_env({}), LocalObjectionTagger)
    llm = tagger_from_env(
        {
            "CALLSENSE_OBJECTIONS_LLM_URL": "http://127.0.0.1:8000/v1",
            "CALLSENSE_OBJECTIONS_LLM_MODEL": "qwen",
            "CALLSENSE_OBJECTIONS_LLM_API_KEY": "k",
            "CALLSENSE_OBJECTIONS_LLM_TIMEOUT_S": "5",
        }
    )
    assert isinstance(llm, LlmObjectionTagger) and isinstance(llm.fallback, LocalObjectionTagger)
    assert llm.settings == LlmSettings("http://127.0.0.1:8000/v1", "qwen", "k", 5.0)
    assert llm.settings.endpoint == "http://127.0.0.1:8000/v1/chat/completions"
    with pytest.raises(ValueError, match="CALLSENSE_OBJECTIONS_LLM_MODEL"):
        tagger_from_env({"CALLSENSE_OBJECTIONS_LLM_URL": "http://127.0.0.1:8000/v1"})
    with pytest.raises(ValueError, match="http"):
        tagger_from_env(
            {"CALLSENSE_OBJECTIONS_LLM_URL": "127.0.0.1:8000", "CALLSENSE_OBJECTIONS_LLM_MODEL": "m"}
        )
    with pytest.raises(ValueError, match="CALLSENSE_OBJECTIONS_LLM_TIMEOUT_S"):
        tagger_from_env(
            {
                "CALLSENSE_OBJECTIONS_LLM_URL": "http://h/v1",
                "CALLSENSE_OBJECTIONS_LLM_MODEL": "m",
                "CALLSENSE_OBJECTIONS_LLM_TIMEOUT_S": "soon",
            }
        )


def test_tagger_from_env_reads_the_model_it_is_pointed_at(tmp_path: Path) -> None:
    shipped = tagger_from_env({})
    assert isinstance(shipped, LocalObjectionTagger) and shipped.model.path == ADAPTER_PATH
    assert shipped.model.fits == len(adapter_files())
    one_fit = adapter_files()[0]
    single = tagger_from_env({"CALLSENSE_OBJECTIONS_MODEL": str(one_fit)})
    assert (
        isinstance(single, LocalObjectionTagger) and single.model.fits == 1 and single.model.path == one_fit
    )
    llm = tagger_from_env(
        {
            "CALLSENSE_OBJECTIONS_MODEL": str(one_fit),
            "CALLSENSE_OBJECTIONS_LLM_URL": "http://127.0.0.1:8000/v1",
            "CALLSENSE_OBJECTIONS_LLM_MODEL": "qwen",
        }
    )
    assert isinstance(llm, LlmObjectionTagger) and isinstance(llm.fallback, LocalObjectionTagger)
    assert llm.fallback.model.path == one_fit
    with pytest.raises(ObjectionModelError, match="absent.safetensors: cannot read"):
        tagger_from_env({"CALLSENSE_OBJECTIONS_MODEL": str(tmp_path / "absent.safetensors")})
