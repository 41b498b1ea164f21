"""Scripted sales calls: what `callsense demo --script NAME` plays, and tests/e2e/test_scripted_calls.py
asserts.

Each ``ScriptedCall`` is a two-party call (the agent on the left channel, the customer on the right) written
in the plain, polite language B2B buyers use: nobody says "I hate this". A buyer who is losing interest says
"that's well over what we budgeted", and the rubric of docs/labelling.md calls that negative however gently
it is put. Every line carries the ``mood`` a seasoned sales manager would hear in it (the score a right
model gives it), and the call carries what the live rules (gateway/live.py, the default ``BadgeSettings``)
must make of it, as data (``Expectation``):

- the badge's colour changes in order (every call starts amber, with no event for it), each within a
  window of call time measured from the lines it depends on (``At``): green within the first 30 s of a
  happy customer, red within about 10 s of the customer's second clearly negative line, back from red
  after a recovery; steps that a right model may or may not take (a warm opening going green before the
  price lands) are ``optional``;
- the coaching cues, by topic (pricing when the call sours at the price, timeline at the timeline);
- words the post-call summary lines must contain, and words they must not.

The times are call time (the audio's own clock), so a call played faster than real time must give the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from callsense.topics import Topic

Speaker = Literal["agent", "customer"]
Mood = Literal["positive", "neutral", "negative"]
Colour = Literal["green", "amber", "red"]
Edge = Literal["start", "end"]


@dataclass(frozen=True)
class Turn:
    """One turn of the call: who speaks, and what they say."""

    speaker: Speaker
    text: str


@dataclass(frozen=True)
class Line:
    """A turn of a script, with the mood it is said in and, for lines an expectation counts from, a mark."""

    speaker: Speaker
    text: str
    mood: Mood = "neutral"
    mark: str = ""

    @property
    def turn(self) -> Turn:
        return Turn(self.speaker, self.text)


def agent(text: str, mood: Mood = "neutral", mark: str = "") -> Line:
    return Line("agent", text, mood, mark)


def customer(text: str, mood: Mood, mark: str = "") -> Line:
    return Line("customer", text, mood, mark)


@dataclass(frozen=True)
class At:
    """A moment of the call: the start or the end of the line marked ``mark``, plus ``plus_s`` seconds."""

    mark: str
    edge: Edge = "end"
    plus_s: float = 0.0

    def describe(self) -> str:
        after = f" + {self.plus_s:g} s" if self.plus_s else ""
        return f"{self.edge} of {self.mark!r}{after}"


@dataclass(frozen=True)
class BadgeStep:
    """One colour change: to ``colour`` (or one of ``alternatives``), not before ``not_before`` and no later
    than ``by`` (when given)."""

    colour: Colour
    not_before: At | None = None
    by: At | None = None
    optional: bool = False
    """A change a right model may or may not make; when it comes, it comes here in the order."""
    alternatives: tuple[Colour, ...] = ()
    """Other colours this change may go to: a badge leaving red for a customer who warmed up quickly goes
    straight to green (the rules report only the colour they settle on)."""

    @property
    def colours(self) -> tuple[Colour, ...]:
        return (self.colour, *self.alternatives)

    def describe(self) -> str:
        colours = "/".join(self.colours)
        return f"({colours})" if self.optional else colours


@dataclass(frozen=True)
class CueStep:
    """A coaching cue on ``topic``, not before ``not_before`` and no later than ``by`` (when given)."""

    topic: Topic
    not_before: At | None = None
    by: At | None = None


@dataclass(frozen=True)
class Expectation:
    badges: tuple[BadgeStep, ...] = ()
    """The badge's changes in order, and no others (every call starts amber, with no event for it)."""
    cues: tuple[CueStep, ...] = ()
    """The cues in order, and no others."""
    summary_has: tuple[str, ...] = ()
    """Words the summary lines must contain (case-insensitive), each in some line."""
    summary_lacks: tuple[str, ...] = ()
    """Words no summary line may contain."""


@dataclass(frozen=True)
class ScriptedCall:
    name: str
    about: str
    """One line: what happens in the call."""
    lines: tuple[Line, ...]
    expect: Expectation = field(default_factory=Expectation)

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(line.turn for line in self.lines)

    def index(self, mark: str) -> int:
        """The position of the line marked ``mark``; KeyError naming the marks when there is none."""
        for index, line in enumerate(self.lines):
            if line.mark == mark:
                return index
        raise KeyError(f"{self.name}: no line is marked {mark!r}; marks: {self.marks()}")

    def marks(self) -> list[str]:
        return [line.mark for line in self.lines if line.mark]

    def badge_timeline(self) -> str:
        """The expected colours in order, as people say them: "amber -> (green) -> red"."""
        return " -> ".join(["amber", *(step.describe() for step in self.expect.badges)])


# ------------------------------------------------------------------------------------------------ the calls

# The windows below hold with a right model's scores under the default live rules: red needs the customer's
# 30 s average below 0.30 at two observations more than 5 s apart (an observation is the end of a customer
# sentence), so it comes with the customer sentence after the second clearly negative line, after one short
# agent reply: within 10 s of that line's end. tests/tools/test_scripted_calls.py replays every script with
# idealised scores through the live rules to keep these windows honest.
RED_AFTER_SECOND_NO_S = 10.0
GREEN_WITHIN_S = 30.0


def sours_to_red(cue: Topic, summary_has: tuple[str, ...]) -> Expectation:
    """What a call that sours expects: green allowed before the first clear "no", then amber allowed, red
    not before the first "no" and by RED_AFTER_SECOND_NO_S after the second; one ``cue`` after the first."""
    return Expectation(
        badges=(
            BadgeStep("green", optional=True, by=At("first-no", "start")),
            BadgeStep("amber", optional=True, not_before=At("first-no", "start")),
            BadgeStep(
                "red",
                not_before=At("first-no", "start"),
                by=At("second-no", "end", RED_AFTER_SECOND_NO_S),
            ),
        ),
        cues=(CueStep(cue, not_before=At("first-no", "start")),),
        summary_has=summary_has,
    )


HAPPY_CLOSE = ScriptedCall(
    name="happy-close",
    about="a warm customer who buys; one mild worry about onboarding does not cool the call",
    lines=(
        agent("Hi Priya, it's Sam from Acme. Thanks for making time again after last week's demo."),
        customer(
            "Of course, happy to. The whole team has been talking about the demo since last week, "
            "and honestly it landed really well with everyone.",
            "positive",
            mark="first-happy",
        ),
        agent("Glad to hear it. What stood out for them?"),
        customer(
            "Mostly the live coaching view. "
            "Our new reps would get a lot out of it, and it looks easy to use.",
            "positive",
        ),
        agent("That's exactly who it helps most. Would you start with the sales team, about twenty seats?"),
        customer(
            "Yes, twenty seats is right for a start. The proposal you sent over works well for us.",
            "positive",
        ),
        agent("Great. Onboarding usually takes about three weeks, with a kickoff call in the first week."),
        customer("Three weeks is a bit longer than I'd hoped, to be honest.", "negative", mark="one-worry"),
        agent("We can hold the kickoff this Friday, so your reps would be live a week earlier."),
        customer("Oh, that would be great. That really helps us.", "positive"),
        agent("Perfect. I'll send the order form over this afternoon."),
        customer(
            "Sounds good, I'll sign it as soon as it arrives. We're really looking forward to this.",
            "positive",
        ),
        agent("Thanks Priya, talk soon."),
        customer("Thanks Sam, this was really helpful.", "positive", mark="last"),
    ),
    expect=Expectation(
        badges=(BadgeStep("green", by=At("first-happy", "start", GREEN_WITHIN_S)),),
        summary_has=("customer average sentiment",),
        summary_lacks=("turned negative",),
    ),
)

SOURS_AT_PRICE = ScriptedCall(
    name="sours-at-price",
    about="a friendly discovery, then the price lands and the customer cools, politely, and stays cool",
    lines=(
        agent("Hi Dana, this is Sam from Acme. Thanks for making time for me today."),
        customer("Sure, happy to chat. The demo last week was really great.", "positive"),
        agent("Great to hear. How does your team keep track of its sales calls right now?"),
        customer("We mostly use spreadsheets. We lose a lot of time on it, and we miss things.", "neutral"),
        agent("That is exactly what we fix. Every call is scored live, so you see problems early."),
        customer("That sounds really useful. How quickly could we get started?", "positive"),
        agent(
            "Within a week. "
            "For a team your size, the premium plan is priced at five thousand dollars a month. "
            "That includes the onboarding, live coaching for every rep, and a dedicated success manager."
        ),
        customer(
            "Five thousand a month? That's well over what we budgeted for this, I'm afraid.",
            "negative",
            mark="first-no",
        ),
        agent("I understand. Many teams start with the standard plan."),
        customer(
            "Honestly, that's not where we need to be. "
            "I'd have a hard time justifying that price to finance.",
            "negative",
            mark="second-no",
        ),
        agent("If you sign for a year, I can take thirty percent off."),
        customer(
            "Even with the discount, it's too much for us this year.",
            "negative",
        ),
        agent("Let me send you a written offer today, and we can talk again on Friday."),
        customer("Sure, send it over. But I wouldn't expect much to change on our side.", "negative"),
    ),
    expect=sours_to_red(cue="pricing", summary_has=("pricing", "negative")),
)

SOURS_AT_TIMELINE = ScriptedCall(
    name="sours-at-timeline",
    about="the customer likes the product, then the rollout time lands and the deal stalls on timing",
    lines=(
        agent("Hi Marcus, Sam from Acme here. Thanks for joining."),
        customer("Hi Sam, glad we found a time. We liked what we saw in the trial.", "positive"),
        agent("Great. What would you most want to get out of it?"),
        customer(
            "Mainly getting our twelve account managers onto one system. "
            "Right now it's all in email threads.",
            "neutral",
        ),
        agent("Makes sense. And the numbers we discussed still look fine on your side?"),
        customer("Yes, the numbers look fine to us.", "positive"),
        agent(
            "Great. For a team your size, implementation takes about four months, because of the data "
            "migration and the training. So you'd be live in the autumn."
        ),
        customer(
            "Four months? The timeline doesn't really work for us, we need this live before Q3.",
            "negative",
            mark="first-no",
        ),
        agent("I see. The data migration is what takes the time."),
        customer(
            "Then I'm not sure this is the right time for us. Our busy season starts in July, "
            "and we can't have a rollout running then.",
            "negative",
            mark="second-no",
        ),
        agent("Could a smaller first phase fit before July?"),
        customer(
            "Maybe, but I doubt it. Our last rollout ran months late.",
            "negative",
        ),
        agent("Let me talk to our implementation team and come back with a plan by Thursday."),
        customer("Okay, but if it can't be done by June, we'll have to wait until next year.", "negative"),
    ),
    expect=sours_to_red(cue="timeline", summary_has=("timeline", "negative")),
)

RECOVERS_AFTER_CONCESSION = ScriptedCall(
    name="recovers-after-concession",
    about="the customer pushes back on the price until the agent makes a concession, then warms up again",
    lines=(
        agent("Hi Elena, Sam from Acme. Thanks for getting back to me."),
        customer("Hi Sam. Yes, I had a look at the proposal you sent over.", "neutral"),
        agent("Great. What did you think?"),
        customer(
            "The product looks good, but the price is well over what we budgeted for this year.",
            "negative",
            mark="first-no",
        ),
        agent("I see. Which part is the sticking point?"),
        customer(
            "Mainly the cost per seat. I'd have a hard time justifying that to finance for forty seats.",
            "negative",
            mark="second-no",
        ),
        agent("Understood. Would fewer seats help?"),
        customer("Honestly, even twenty seats would be a stretch at that rate.", "negative"),
        agent("What if we started with twenty seats, and I took twenty five percent off the first year?"),
        customer(
            "Okay, that changes things. Twenty seats at that rate is something I can get approved.",
            "positive",
            mark="accepts",
        ),
        agent("Great. And we'd include the onboarding at no extra cost."),
        customer("That's great, thank you. The team will be really glad to hear it.", "positive"),
        agent("I'll send the updated order form this afternoon."),
        customer("Perfect. If it looks like what we discussed, I'll sign it this week.", "positive"),
        agent("Thanks Elena, talk soon."),
        customer("Thanks Sam, I really appreciate you working with us on this.", "positive", mark="last"),
    ),
    expect=Expectation(
        badges=(
            BadgeStep(
                "red",
                not_before=At("first-no", "start"),
                by=At("second-no", "end", RED_AFTER_SECOND_NO_S),
            ),
            BadgeStep(
                "amber", not_before=At("accepts", "start"), by=At("last", "end"), alternatives=("green",)
            ),
            BadgeStep("green", optional=True, not_before=At("accepts", "start")),
        ),
        cues=(CueStep("pricing", not_before=At("first-no", "start"), by=At("accepts", "end")),),
        summary_has=("recovered", "pricing"),
    ),
)

POLITE_BUT_LOST = ScriptedCall(
    name="polite-but-lost",
    about="a pleasant customer who liked the trial and still says no, courteously, to the end",
    lines=(
        agent("Hi Tom, it's Sam from Acme. Thanks for taking my call."),
        customer("Hi Sam, of course. Thanks for following up.", "neutral"),
        agent("You've had the trial for two weeks now. How did the team find it?"),
        customer("They liked it, honestly. The call summaries were really nice to have.", "positive"),
        agent(
            "Glad to hear that. Several of your reps used it every day, and the summaries saved your team "
            "leads a lot of time. Shall we talk about bringing the whole team on board?"
        ),
        customer(
            "We've talked it over, and we've decided to stay with what we have for now. "
            "I'm afraid a switch is off the table this year.",
            "negative",
            mark="first-no",
        ),
        agent("I understand. May I ask what tipped the decision?"),
        customer(
            "What we already have covers most of what we need. It's hard to justify another tool.",
            "negative",
            mark="second-no",
        ),
        agent("Could anything change that?"),
        customer("I don't think so, to be honest. It's just not a priority for us.", "negative"),
        agent("Fair enough. Would it be alright if I checked in again in the new year?"),
        customer("Sure, you can reach out then. But I wouldn't count on anything changing.", "negative"),
        agent("Understood. Thanks for your honesty, Tom."),
        customer("Thanks Sam. You've been very helpful, I'm sorry it didn't work out this time.", "negative"),
    ),
    expect=sours_to_red(cue="need", summary_has=("negative",)),
)

NEUTRAL_DISCOVERY = ScriptedCall(
    name="neutral-discovery",
    about="a calm discovery call: the customer answers questions, neither warm nor cool; nothing to flag",
    lines=(
        agent("Hi Grace, Sam from Acme. Before I show anything, I'd like to understand how your team works."),
        customer(
            "Sure. We're a team of fifteen, mostly inside sales, covering the US and Canada.", "neutral"
        ),
        agent("How do you review calls today?"),
        customer(
            "Team leads listen to a few recordings each week. They take notes in a shared document.",
            "neutral",
        ),
        agent("How many calls does a rep make on a typical day?"),
        customer("Around thirty, and most of them are under ten minutes.", "neutral"),
        agent("Where do you keep the pipeline?"),
        customer("In our CRM, and the calls themselves run over Zoom.", "neutral"),
        agent("Who would be involved in choosing a tool like this?"),
        customer("That would be me and our head of sales operations.", "neutral"),
        agent("What would a good first month look like for you?"),
        customer("Probably the team leads using it on their own calls first, then the reps.", "neutral"),
        agent("That's helpful. I'll put together a short proposal based on this."),
        customer("Okay. Please send it to me, and I'll share it with Leo.", "neutral"),
    ),
    expect=Expectation(
        badges=(),
        cues=(),
        summary_has=("customer average sentiment",),
        summary_lacks=("negative spike", "turned negative"),
    ),
)

SCRIPTS: Mapping[str, ScriptedCall] = {
    call.name: call
    for call in (
        HAPPY_CLOSE,
        SOURS_AT_PRICE,
        SOURS_AT_TIMELINE,
        RECOVERS_AFTER_CONCESSION,
        POLITE_BUT_LOST,
        NEUTRAL_DISCOVERY,
    )
}
DEFAULT_SCRIPT = SOURS_AT_PRICE.name
"""What `callsense demo` plays without --script: the call that turns sour at the price."""


class UnknownScript(KeyError):
    """No script of that name; the message names the choices."""

    def __str__(self) -> str:
        return str(self.args[0])


def script_named(name: str) -> ScriptedCall:
    try:
        return SCRIPTS[name]
    except KeyError:
        raise UnknownScript(f"no scripted call named {name!r}; choose one of: {', '.join(SCRIPTS)}") from None


# ------------------------------------------------------------------------------------------------ checking

Span = tuple[int, int]
"""Where a line's speech lies in the call: (start_ms, end_ms)."""


@dataclass(frozen=True)
class Moment:
    """A badge change or a cue as the call's events report it: what, and when (call time, ms)."""

    what: str
    at_ms: int


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def describe_moments(moments: list[Moment], start: str = "") -> str:
    """ "amber -> green (12.3 s) -> red (40.1 s)" with a ``start``, else "pricing (41.0 s)" or "none"."""
    parts = [f"{m.what} ({_seconds(m.at_ms)})" for m in moments]
    if start:
        return " -> ".join([start, *parts])
    return ", ".join(parts) or "none"


class _Clock:
    """Turns an ``At`` into call time, from where the call's lines lie."""

    def __init__(self, call: ScriptedCall, spans: Sequence[Span]) -> None:
        if len(spans) != len(call.lines):
            raise ValueError(f"{call.name}: {len(call.lines)} lines but {len(spans)} spans")
        self._call, self._spans = call, spans

    def ms(self, at: At) -> int:
        start, end = self._spans[self._call.index(at.mark)]
        return (start if at.edge == "start" else end) + round(at.plus_s * 1000)


def _window_problems(
    what: str,
    moment: Moment,
    not_before: At | None,
    by: At | None,
    clock: _Clock,
    tolerance_ms: int,
) -> list[str]:
    problems = []
    if not_before is not None and moment.at_ms < clock.ms(not_before) - tolerance_ms:
        problems.append(
            f"{what} at {_seconds(moment.at_ms)}, before the {not_before.describe()} "
            f"({_seconds(clock.ms(not_before))})"
        )
    if by is not None and moment.at_ms > clock.ms(by) + tolerance_ms:
        problems.append(
            f"{what} at {_seconds(moment.at_ms)}, after the {by.describe()} ({_seconds(clock.ms(by))})"
        )
    return problems


def _align(colours: list[str], steps: tuple[BadgeStep, ...]) -> list[BadgeStep] | None:
    """The steps the actual colours take, in order (optional steps may be skipped), or None."""
    if not steps:
        return [] if not colours else None
    step, rest = steps[0], steps[1:]
    if colours and colours[0] in step.colours:
        tail = _align(colours[1:], rest)
        if tail is not None:
            return [step, *tail]
    return _align(colours, rest) if step.optional else None


def check_events(
    call: ScriptedCall, spans: Sequence[Span], events: Sequence[Mapping[str, Any]], *, tolerance_ms: int = 0
) -> list[str]:
    """What in a played call's events (the WebSocket's: ``badge``, ``cue``, the ``summary`` last) differs
    from the script's expectation; ``spans`` says where each line was spoken. Empty: all as expected.
    ``tolerance_ms`` widens every time window (the ASR puts a sentence's edges a little off its speech)."""
    clock = _Clock(call, spans)
    expect = call.expect
    badges = [Moment(str(e["state"]), int(e["at_ms"])) for e in events if e.get("type") == "badge"]
    cues = [Moment(str(e["topic"]), int(e["at_ms"])) for e in events if e.get("type") == "cue"]
    problems: list[str] = []

    steps = _align([b.what for b in badges], expect.badges)
    if steps is None:
        problems.append(f"badge: expected {call.badge_timeline()}, got {describe_moments(badges, 'amber')}")
    else:
        for step, badge in zip(steps, badges, strict=True):
            problems += _window_problems(
                f"badge {badge.what}", badge, step.not_before, step.by, clock, tolerance_ms
            )

    expected_topics = [c.topic for c in expect.cues]
    if [c.what for c in cues] != expected_topics:
        problems.append(
            f"cues: expected {', '.join(expected_topics) or 'none'}, got {describe_moments(cues)}"
        )
    else:
        for cue_step, cue in zip(expect.cues, cues, strict=True):
            problems += _window_problems(
                f"cue {cue.what}", cue, cue_step.not_before, cue_step.by, clock, tolerance_ms
            )

    summary = next((e for e in events if e.get("type") == "summary"), None)
    if summary is None:
        return [*problems, "no summary event"]
    final = badges[-1].what if badges else "amber"
    if summary.get("badge") != final:
        problems.append(f"summary: badge {summary.get('badge')!r}, but the last badge event says {final!r}")
    lines = summary.get("lines")
    text = "\n".join(str(line) for line in lines).lower() if isinstance(lines, list) else ""
    for words in expect.summary_has:
        if words.lower() not in text:
            problems.append(f"summary: no line says {words!r}; lines: {lines}")
    for words in expect.summary_lacks:
        if words.lower() in text:
            problems.append(f"summary: a line says {words!r}; lines: {lines}")
    return problems


def verdict(
    call: ScriptedCall,
    spans: Sequence[Span],
    events: Sequence[Mapping[str, Any]],
    *,
    tolerance_ms: int = 1_000,
) -> str:
    """One paragraph for a person: did the played call come back as its script expects, and if not, why."""
    problems = check_events(call, spans, events, tolerance_ms=tolerance_ms)
    head = f"{call.name}: expected badge {call.badge_timeline()}"
    cues = ", ".join(c.topic for c in call.expect.cues)
    head += f", cue {cues}" if cues else ", no cue"
    if not problems:
        return f"{head}: as scripted"
    return f"{head}: NOT as scripted\n" + "\n".join(f"  - {p}" for p in problems)
