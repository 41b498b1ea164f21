"""Days of stored sales calls for the drift tests: ordinary days, and a day of new jargon.

The ordinary calls are B2B discovery calls for a scheduling platform, in the plain, polite language of
buyers and reps (tests/support and tools/scripted_calls.py follow the same style): a greeting, a discovery
question and its answer, pricing or timeline, a close. Each call draws one line per stage, seeded by the
day, so days differ as real days do while a test run is reproducible.

The jargon day is the same team the morning after the company started selling an edge-networking product it
acquired: the openings and closings are the usual ones, but the middle of every call is SD-WAN, SASE, ZTNA,
BGP and the like, words the model never saw in training. Still polite, still ordinary sales talk in tone.

The lines are scored once by the real shipped model (a cache by text) and stored as the gateway stores them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from callsense.domain import Channel, UtteranceScore
from gateway.store import Store
from scorer_service.inference import Prediction, SentimentInput, SentimentModel

UTTERANCE_MS = 4_000

OPENING_AGENT = (
    "Hi Priya, this is Jordan from Calloway. Thanks for making the time this morning.",
    "Good afternoon, it's Sam from Calloway. Is now still a good time for our call?",
    "Hey Marcus, thanks for joining. I've got us down for thirty minutes, does that still work?",
    "Hi there, it's Alex from Calloway, following up on the demo from last week.",
    "Morning, thanks for hopping on. How has your week been so far?",
    "Hi Dana, thanks for taking my call. I wanted to pick up where we left off on Tuesday.",
)
OPENING_CUSTOMER = (
    "Sure, thirty minutes works. I have a hard stop at the top of the hour though.",
    "Yes, now is fine. Sorry I was a couple of minutes late, the last meeting ran over.",
    "Hi, good to hear from you. It's been a busy week but we're getting there.",
    "Thanks for following up. I shared the demo recording with my manager yesterday.",
    "Good, thanks. We just wrapped up our quarterly planning, so the timing is good.",
    "Hello, yes, I have the notes from last time in front of me.",
)
DISCOVERY_AGENT = (
    "Can you walk me through how your team schedules site visits today?",
    "How many people on your side would be using the platform day to day?",
    "What does your current process look like when a customer asks to reschedule?",
    "Which tools are you using right now for reporting to your leadership team?",
    "What would a successful first quarter look like for you if we went ahead?",
    "Who else would need to be involved before you could make a decision?",
    "How are you handling the handoff between the sales team and the support team today?",
)
DISCOVERY_CUSTOMER = (
    "Right now it's mostly spreadsheets and a shared calendar, which gets messy when someone is out sick.",
    "We have about forty people in the field and six coordinators in the office.",
    "Our coordinators spend a good part of every morning moving appointments around by hand.",
    "We pull the numbers into a slide deck every Friday, and it takes most of an afternoon.",
    "I'd like the team to stop double booking people, that happens a few times a month.",
    "My manager and someone from finance would want to see it before we sign anything.",
    "Mostly by email, which means things slip through the cracks now and then.",
)
OFFER_AGENT = (
    "For a team your size the standard plan comes to about two thousand a month, billed annually.",
    "We usually get customers live in three to four weeks, including the data import.",
    "The onboarding includes two training sessions for your coordinators and one for managers.",
    "If you sign before the end of the quarter we can include the reporting add-on at no extra cost.",
    "We can start with a pilot for one region and expand once your team is comfortable.",
    "I can send over a proposal with the pricing broken down by seat.",
)
OFFER_CUSTOMER = (
    "That's a bit more than we had budgeted, but it might be worth it if it saves the coordinators time.",
    "Four weeks sounds reasonable, as long as it doesn't land in the middle of our busy season.",
    "A pilot in one region would make it much easier to get approval internally.",
    "Could you send the proposal by Thursday? Our budget meeting is early next week.",
    "I'm not sure the reporting add-on is something we'd use right away, to be honest.",
    "That works for us. The training sessions would help a lot with getting people on board.",
    "We'd need to check how it connects to our payroll system before we commit.",
)
CLOSING_AGENT = (
    "Great, I'll put together the proposal and send a calendar invite for next Tuesday.",
    "Thanks again for your time today. I'll follow up by email with the notes.",
    "I'll loop in our onboarding lead so you can ask her about the timeline directly.",
    "Does Wednesday afternoon work for a follow up with your manager?",
)
CLOSING_CUSTOMER = (
    "Sounds good, thanks for walking me through it.",
    "Tuesday works. I'll make sure finance can join as well.",
    "Thanks, I'll take a look at the notes and get back to you by Friday.",
    "Great, talk soon.",
)
# The new product: the same polite calls, about an edge-networking appliance and its security stack.
JARGON_AGENT = (
    "The Edge gateway terminates the IPsec tunnels and runs the SASE stack on the same appliance.",
    "You'd provision the ZTNA policies in the orchestrator, and the PoPs enforce them within milliseconds.",
    "Each branch gets a dual-WAN appliance with LTE failover and BGP peering to our backbone.",
    "The SD-WAN licence is priced per Mbps of aggregate throughput, with the CASB module as an add-on.",
    "Microsegmentation rules sync from your IdP over SCIM, so Okta groups map straight onto VLANs.",
    "We support OSPF and BGP on the LAN side, and the overlay uses VXLAN with AES-256 encryption.",
)
JARGON_CUSTOMER = (
    "Does the appliance support BGP failover across both of our MPLS circuits?",
    "We'd need the SWG and DLP policies inspected inline at the PoP, not backhauled to the datacenter.",
    "What's the MTTR on a failed CPE, and do you ship a cold spare under the SLA?",
    "Our SOC ingests everything through syslog into Splunk, so we'd need CEF-formatted logs.",
    "Can the ZTNA connector run as a Kubernetes DaemonSet, or is it VM-only?",
    "How does the QoS handle jitter on VoIP traffic when the primary uplink degrades?",
)

ALL_LINES = (
    OPENING_AGENT
    + OPENING_CUSTOMER
    + DISCOVERY_AGENT
    + DISCOVERY_CUSTOMER
    + OFFER_AGENT
    + OFFER_CUSTOMER
    + CLOSING_AGENT
    + CLOSING_CUSTOMER
    + JARGON_AGENT
    + JARGON_CUSTOMER
)


@dataclass(frozen=True)
class ScriptedCall:
    call_id: str
    tenant: str
    started_at: datetime
    lines: tuple[tuple[Channel, str], ...]


def day_calls(tenant: str, day: date, *, calls: int = 3, jargon: bool = False) -> list[ScriptedCall]:
    """``calls`` calls of ``tenant`` on ``day`` (from 09:00 UTC, an hour apart), 8 lines each."""
    rng = random.Random(f"{tenant}:{day.isoformat()}")
    made = []
    for n in range(calls):
        middle: list[tuple[Channel, str]] = (
            [
                ("agent", rng.choice(JARGON_AGENT)),
                ("customer", rng.choice(JARGON_CUSTOMER)),
                ("agent", rng.choice(JARGON_AGENT)),
                ("customer", rng.choice(JARGON_CUSTOMER)),
            ]
            if jargon
            else [
                ("agent", rng.choice(DISCOVERY_AGENT)),
                ("customer", rng.choice(DISCOVERY_CUSTOMER)),
                ("agent", rng.choice(OFFER_AGENT)),
                ("customer", rng.choice(OFFER_CUSTOMER)),
            ]
        )
        lines: list[tuple[Channel, str]] = [
            ("agent", rng.choice(OPENING_AGENT)),
            ("customer", rng.choice(OPENING_CUSTOMER)),
            *middle,
            ("agent", rng.choice(CLOSING_AGENT)),
            ("customer", rng.choice(CLOSING_CUSTOMER)),
        ]
        started = datetime.combine(day, time(9 + n), UTC)
        made.append(ScriptedCall(f"{tenant}-{day.isoformat()}-{n}", tenant, started, tuple(lines)))
    return made


class LineScores:
    """The shipped model's scores of every line above, computed once."""

    def __init__(self, model: SentimentModel, lines: Iterable[str] = ALL_LINES) -> None:
        unique = sorted(set(lines))
        predictions = model.predict([SentimentInput(text) for text in unique])
        self.version = model.info.version
        self._scores: dict[str, Prediction] = {}
        for text, prediction in zip(unique, predictions, strict=True):
            assert isinstance(prediction, Prediction), prediction
            self._scores[text] = prediction

    def events(self, call: ScriptedCall) -> list[UtteranceScore]:
        events = []
        for i, (channel, text) in enumerate(call.lines):
            p = self._scores[text]
            events.append(
                UtteranceScore(
                    call_id=call.call_id,
                    utterance_id=i,
                    channel=channel,
                    start_ms=i * UTTERANCE_MS,
                    end_ms=(i + 1) * UTTERANCE_MS - 500,
                    text=text,
                    label=p.label,  # type: ignore[arg-type]
                    p_negative=p.p_negative,
                    p_neutral=p.p_neutral,
                    p_positive=p.p_positive,
                    score=p.score,
                    model_version=self.version,
                )
            )
        return events


async def store_calls(store: Store, scores: LineScores, calls: Sequence[ScriptedCall]) -> None:
    """Store the calls as the gateway does: started, scored, ended."""
    for call in calls:
        await store.upsert_call_start(
            call.call_id, {"tenant": call.tenant, "team": "east", "agent": "sam"}, started_at=call.started_at
        )
        await store.record_scores(scores.events(call))
        await store.end_call(call.call_id)


def days_before(day: date, count: int) -> list[date]:
    """The ``count`` days before ``day``, oldest first."""
    return [day - timedelta(days=count - i) for i in range(count)]
