"""Cuts a call's final transcript segments into utterances the sentiment scorer can take.

One ``Segmenter`` per call. Each final segment is masked for PII first (so a phone number said with
commas in it is found whole, and no cut falls inside it), then cut:

1. at sentence ends: every sentence is its own utterance, the unit the scorer was trained on;
2. a sentence of 128 tokens or more is cut at clause boundaries, coarsest first (``; :`` and dashes, then
   commas, then before conjunctions such as "but", "and", "so", "because"), and the pieces are packed back
   together greedily up to the budget, so punctuation-less ASR text still splits where a clause starts;
3. what still does not fit is cut between words, and a single "word" longer than the budget (only
   garbage such as a pasted token is) between characters, the one case where a word is cut;
4. fragments under ``min_words`` words ("Yes." "Okay.") are merged with a neighbour of the same segment
   when the result still fits: alone they carry little sentiment and cost a scorer call each.

Utterances never span segments: a segment is one stretch of one speaker, and holding text back for the
next segment would delay every score by a segment. So every utterance is complete, and emitted, as soon
as its segment arrives; ``close`` has nothing left to flush and only ends the call.

The one thing kept from segment to segment is for masking: a card number said across two segments of
a channel ("my card number is 4111 1111" ... "1111 1111"). A segment that ends in digits that may begin a
card has them masked at once, and the segmenter keeps, per channel, the digits so far, so that the digits
the channel's next segment starts with are masked too. That state is a few digits per channel, for at most
``MAX_CARRIED_CHANNELS`` channels, and is dropped when the call ends.

Token counts come from the scorer's own tokenizer ([CLS] and [SEP] included), so "under 128 tokens" here
means exactly what the scorer checks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from callsense.tokenization import MAX_TOKENS, SentimentTokenizer
from chopper_service.pii import CardCarry, MaskedText, PiiSpan, mask_pii

TokenCounter = Callable[[str], int]
"""Tokens of a text for the scorer, [CLS] and [SEP] included."""

MIN_WORDS = 3
MAX_CARRIED_CHANNELS = 8
"""Channels of one call for which a card number cut across segments is followed (the oldest is dropped
beyond that; a call has two or three)."""

_Range = tuple[int, int]


@dataclass(frozen=True)
class WordTiming:
    """One recognised word and when it was said (ms from the start of the call)."""

    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class TranscriptSegment:
    """A final transcript segment: one stretch of speech on one channel.

    ``channel`` is opaque here (the server passes the ``ChannelRole`` value); ``words`` may be empty,
    then times are apportioned by characters.
    """

    text: str
    channel: int
    start_ms: int
    end_ms: int
    words: tuple[WordTiming, ...] = ()
    segment_id: int = 0


@dataclass(frozen=True)
class Utterance:
    """One scorable piece of a call, PII masked."""

    utterance_id: int
    """0, 1, 2, ... in emission order within the call, whatever the channel."""
    channel: int
    start_ms: int
    end_ms: int
    text: str
    """Masked text; never empty."""
    token_count: int
    """Scorer tokens of ``text`` ([CLS] and [SEP] included); below the segmenter's ``max_tokens``."""
    pii: tuple[PiiSpan, ...]
    """Masks in ``text``, by start offset."""
    previous_text: str
    """Masked text of the call's previous utterance (any channel); "" for the first."""
    segment_id: int
    """The segment this utterance came from."""


class SegmentError(ValueError):
    """A segment that cannot be cut as it is; the message says what is wrong with it."""


class SegmenterClosed(RuntimeError):
    """A segment arrived after the call was closed."""


@functools.cache
def default_token_counter() -> TokenCounter:
    """The scorer's tokenizer, loaded once per process and shared by every call's segmenter."""
    return SentimentTokenizer().count


class Segmenter:
    """Turns the final segments of one call into ``Utterance``s with ids stable and ordered per call."""

    def __init__(
        self,
        *,
        count_tokens: TokenCounter | None = None,
        max_tokens: int = MAX_TOKENS,
        min_words: int = MIN_WORDS,
    ) -> None:
        """``max_tokens`` is exclusive: every utterance has fewer tokens than that."""
        if max_tokens < 4:  # [CLS] + one character's token + [SEP] must fit, or nothing could be emitted
            raise ValueError(f"max_tokens must be at least 4, not {max_tokens}")
        self._count = count_tokens or default_token_counter()
        self.max_tokens = max_tokens
        self.min_words = min_words
        self._next_id = 0
        self._previous_text = ""
        self._closed = False
        # Per channel: the card number its last segment ended in the middle of (see ``_mask``).
        self._card_carry: dict[int, CardCarry] = {}

    @property
    def next_utterance_id(self) -> int:
        return self._next_id

    @property
    def closed(self) -> bool:
        return self._closed

    def resume(self, next_utterance_id: int, previous_text: str) -> None:
        """Go on with a call another segmenter began (a chopper that went away): its ids and context."""
        self._next_id = next_utterance_id
        self._previous_text = previous_text

    def feed(self, segment: TranscriptSegment) -> list[Utterance]:
        """The utterances of one final segment, in order (none for a segment without words)."""
        if self._closed:
            raise SegmenterClosed(f"segment {segment.segment_id} arrived after the call ended")
        _validate(segment)
        text = (
            segment.text
            if segment.text.strip()
            else " ".join(w.text.strip() for w in segment.words if w.text.strip())
        )
        masked = self._mask(segment.channel, text)
        clock = _Clock(text, segment)
        utterances = []
        for a, b in _Cutter(masked.text, self._count, self.max_tokens, self.min_words).cut():
            piece = masked.text[a:b]
            start_ms, end_ms = clock.span(masked.to_original(a), masked.to_original(b))
            utterances.append(
                Utterance(
                    utterance_id=self._next_id,
                    channel=segment.channel,
                    start_ms=start_ms,
                    end_ms=end_ms,
                    text=piece,
                    token_count=self._count(piece),
                    pii=masked.spans_within(a, b),
                    previous_text=self._previous_text,
                    segment_id=segment.segment_id,
                )
            )
            self._next_id += 1
            self._previous_text = piece
        return utterances

    def close(self) -> list[Utterance]:
        """End the call. Returns what was held back: nothing, as utterances never wait for a later segment."""
        self._closed = True
        self._card_carry.clear()
        return []

    def _mask(self, channel: int, text: str) -> MaskedText:
        """Mask ``text``, following a card number that the channel's previous segment ended inside.

        The start of such a number was masked with that segment (it is sent before the next is heard);
        the digits this segment starts with that go on with it are masked here. A segment without words
        leaves the state as it was.
        """
        if not text.strip():
            return mask_pii(text)
        masked = mask_pii(text, carry=self._card_carry.pop(channel, None))
        if masked.carry is not None:
            if len(self._card_carry) >= MAX_CARRIED_CHANNELS:
                del self._card_carry[next(iter(self._card_carry))]
            self._card_carry[channel] = masked.carry
        return masked


def _validate(segment: TranscriptSegment) -> None:
    where = f"segment {segment.segment_id}"
    if segment.start_ms < 0 or segment.end_ms < segment.start_ms:
        raise SegmentError(f"{where}: times {segment.start_ms}..{segment.end_ms} ms are not a span")
    for word in segment.words:
        if word.start_ms < 0 or word.end_ms < word.start_ms:
            raise SegmentError(
                f"{where}: word {word.text!r} has times {word.start_ms}..{word.end_ms} ms, not a span"
            )


# ------------------------------------------------------------------------------------------ cutting

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
# Words that end in a full stop without ending the sentence.
_ABBREVIATIONS = frozenset(
    re.findall(
        r"\S+", "mr mrs ms dr prof sr jr st vs etc e.g i.e eg ie inc ltd co corp approx a.m p.m u.s u.k"
    )
)
_STRONG_CLAUSE = re.compile(r"[;:](?=\s)|\s[-–—]+(?=\s)")
_COMMA = re.compile(r",(?=\s)")
_CONJUNCTION = re.compile(
    r"(?<=\s)(?=(?:and|but|so|because|cause|or|although|though|however|whereas|unless|yet)\b)",
    re.IGNORECASE,
)
_SPACE = re.compile(r"(?<=\S)\s+(?=\S)")
_WORD = re.compile(r"\S*\w\S*")


def _sentence_cuts(text: str, a: int, b: int) -> list[int]:
    cuts = []
    for m in _SENTENCE_END.finditer(text, a, b):
        start = m.start()
        while start > a and not text[start - 1].isspace():
            start -= 1
        word = text[start : m.start()].lstrip("\"'(“‘[").lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word != "i"):
            continue  # "Dr. Smith", "J. Smith"
        cuts.append(m.end())
    return cuts


def _pattern_cuts(pattern: re.Pattern[str]) -> Callable[[str, int, int], list[int]]:
    def cuts(text: str, a: int, b: int) -> list[int]:
        return [m.end() for m in pattern.finditer(text, a, b)]

    return cuts


def _word_cuts(text: str, a: int, b: int) -> list[int]:
    return [m.end() for m in _SPACE.finditer(text, a, b)]


# Finer and finer ways to cut a piece that is too long; the last resort (characters) is _Cutter's.
_CLAUSE_LEVELS: tuple[Callable[[str, int, int], list[int]], ...] = (
    _pattern_cuts(_STRONG_CLAUSE),
    _pattern_cuts(_COMMA),
    _pattern_cuts(_CONJUNCTION),
    _word_cuts,
)


def _split(text: str, a: int, b: int, cuts: list[int]) -> list[_Range]:
    """``text[a:b]`` cut at ``cuts``, each piece stripped of surrounding space; empty pieces dropped."""
    pieces = []
    for start, end in zip([a, *cuts], [*cuts, b], strict=True):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            pieces.append((start, end))
    return pieces


class _Cutter:
    """Cuts one masked segment text into ranges; see the module docstring for the rules."""

    def __init__(self, text: str, count: TokenCounter, max_tokens: int, min_words: int) -> None:
        self.text = text
        self._count = count
        self.max_tokens = max_tokens
        self.min_words = min_words

    def cut(self) -> list[_Range]:
        text = self.text
        ranges: list[_Range] = []
        for a, b in _split(text, 0, len(text), _sentence_cuts(text, 0, len(text))):
            ranges.extend(self._chop(a, b, 0))
        return [r for r in self._merge_short(ranges) if self._words(r) > 0]

    def _fits(self, a: int, b: int) -> bool:
        return self._count(self.text[a:b]) < self.max_tokens

    def _words(self, r: _Range) -> int:
        return len(_WORD.findall(self.text, r[0], r[1]))

    def _chop(self, a: int, b: int, level: int) -> list[_Range]:
        if self._fits(a, b):
            return [(a, b)]
        if level == len(_CLAUSE_LEVELS):
            return self._chop_characters(a, b)
        pieces = _split(self.text, a, b, _CLAUSE_LEVELS[level](self.text, a, b))
        if len(pieces) < 2:
            return self._chop(a, b, level + 1)
        chopped: list[_Range] = []
        for start, end in pieces:
            chopped.extend(self._chop(start, end, level + 1))
        return self._pack(chopped)

    def _pack(self, ranges: list[_Range]) -> list[_Range]:
        """Join neighbours greedily while they fit: a long sentence becomes few, full utterances."""
        out = [ranges[0]]
        for a, b in ranges[1:]:
            if self._fits(out[-1][0], b):
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out

    def _chop_characters(self, a: int, b: int) -> list[_Range]:
        """Last resort for one "word" over the budget: the longest prefixes that fit (binary search)."""
        out = []
        while a < b:
            lo, hi = a + 1, b  # a single character always fits: max_tokens >= 4
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._fits(a, mid):
                    lo = mid
                else:
                    hi = mid - 1
            out.append((a, lo))
            a = lo
        return out

    def _merge_short(self, ranges: list[_Range]) -> list[_Range]:
        out: list[_Range] = []
        for r in ranges:
            if out and (self._short(out[-1]) or self._short(r)) and self._fits(out[-1][0], r[1]):
                out[-1] = (out[-1][0], r[1])
            else:
                out.append(r)
        return out

    def _short(self, r: _Range) -> bool:
        return self._words(r) < self.min_words


# ------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _TimedWord:
    start: int  # character offsets in the segment's original text
    end: int
    start_ms: int
    end_ms: int


class _Clock:
    """Times of a character range of a segment's original text: from word timings, else by characters."""

    def __init__(self, text: str, segment: TranscriptSegment) -> None:
        self.segment = segment
        self.words = _align(text, segment.words)
        self.lead = len(text) - len(text.lstrip())
        self.content = max(len(text.strip()), 1)

    def span(self, a: int, b: int) -> tuple[int, int]:
        hit = [w for w in self.words if w.start < b and w.end > a]
        if hit:
            start = min(w.start_ms for w in hit)
            return start, max(start, max(w.end_ms for w in hit))
        return self._at(a), self._at(b)

    def _at(self, pos: int) -> int:
        fraction = min(max((pos - self.lead) / self.content, 0.0), 1.0)
        return self.segment.start_ms + round((self.segment.end_ms - self.segment.start_ms) * fraction)


def _align(text: str, words: tuple[WordTiming, ...]) -> list[_TimedWord]:
    """Where each timed word sits in the text; [] (times by characters) when the words do not match it."""
    out = []
    cursor = 0
    folded = text.lower() if len(text.lower()) == len(text) else text  # offsets must stay valid
    for word in words:
        token = word.text.strip()
        if not token:
            continue
        at = text.find(token, cursor)
        if at < 0:
            at = folded.find(token.lower(), cursor)
        if at < 0:
            return []
        cursor = at + len(token)
        out.append(_TimedWord(at, cursor, word.start_ms, word.end_ms))
    return out
