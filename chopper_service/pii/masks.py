"""What a mask is, and how a text's finds become the masked text: kinds, spans, overlaps, offsets."""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass


class PiiKind(enum.Enum):
    """What was masked; the value is the mask written into the text."""

    EMAIL = "[EMAIL]"
    PHONE = "[PHONE]"
    CARD = "[CARD]"
    NATIONAL_ID = "[NATIONAL_ID]"
    CARD_SECURITY_CODE = "[CARD_SECURITY_CODE]"
    IBAN = "[IBAN]"
    DATE_OF_BIRTH = "[DATE_OF_BIRTH]"
    ADDRESS = "[ADDRESS]"

    @property
    def mask(self) -> str:
        return self.value


@dataclass(frozen=True)
class PiiSpan:
    """Where a mask sits in the masked text: ``masked.text[start:end] == kind.mask``."""

    kind: PiiKind
    start: int
    end: int


@dataclass(frozen=True)
class Find:
    """A piece of the original text to mask (offsets into the original)."""

    kind: PiiKind
    start: int
    end: int


@dataclass(frozen=True)
class CardCarry:
    """A card number a text ended in the middle of, for the next text of the same speaker.

    ``digits`` are those already said (and masked); "" when the text ended on a cue such as "my card
    number is" and no digit yet.
    """

    digits: str


@dataclass(frozen=True)
class _Edit:
    """One replacement: where it was in the original and where its mask is in the masked text."""

    kind: PiiKind
    original_start: int
    original_end: int
    start: int
    end: int


@dataclass(frozen=True)
class MaskedText:
    """The text with PII replaced, the spans of the masks, and a way back to original offsets.

    ``carry`` is set when the text ends inside a card number (its start was masked): pass it to
    ``mask_pii`` with the same speaker's next text, so that the rest of the number is masked too.
    """

    text: str
    spans: tuple[PiiSpan, ...]
    _edits: tuple[_Edit, ...] = ()
    carry: CardCarry | None = None

    def to_original(self, pos: int) -> int:
        """Offset in the original text of offset ``pos`` of the masked text.

        A position inside a mask maps to the start of what it replaced when it is the mask's first
        character, else to the end: cut points never fall inside a mask, so this only has to be monotonic.
        """
        shift = 0
        for edit in self._edits:
            if pos < edit.start:
                break
            if pos < edit.end:
                return edit.original_start if pos == edit.start else edit.original_end
            shift = edit.original_end - edit.end
        return pos + shift

    def spans_within(self, start: int, end: int) -> tuple[PiiSpan, ...]:
        """The spans inside ``text[start:end]``, re-based to offsets of that slice."""
        return tuple(
            PiiSpan(s.kind, s.start - start, s.end - start) for s in self.spans if start <= s.start < end
        )


def resolve_overlaps(finds: list[Find]) -> list[Find]:
    """Keep the longest finds that do not overlap (a spoken e-mail beats the digits inside it).

    Among finds of equal length the earlier one in the text wins, then the one listed first.
    """
    starts: list[int] = []  # the chosen finds, disjoint, so sorted by start they are sorted by end too
    chosen: list[Find] = []
    order = sorted(range(len(finds)), key=lambda i: (-(finds[i].end - finds[i].start), finds[i].start, i))
    for i in order:
        find = finds[i]
        at = bisect.bisect_right(starts, find.start)
        if at > 0 and chosen[at - 1].end > find.start:
            continue  # overlaps the chosen find that starts at or before it
        if at < len(chosen) and chosen[at].start < find.end:
            continue  # overlaps the chosen find that starts after it
        starts.insert(at, find.start)
        chosen.insert(at, find)
    return chosen


def apply_finds(text: str, finds: list[Find], carry: CardCarry | None = None) -> MaskedText:
    """``text`` with each of ``finds`` (disjoint, in order) replaced by its mask."""
    parts: list[str] = []
    edits: list[_Edit] = []
    cursor = 0
    length = 0
    for find in finds:
        parts.append(text[cursor : find.start])
        length += find.start - cursor
        mask = find.kind.mask
        edits.append(_Edit(find.kind, find.start, find.end, length, length + len(mask)))
        parts.append(mask)
        length += len(mask)
        cursor = find.end
    parts.append(text[cursor:])
    spans = tuple(PiiSpan(e.kind, e.start, e.end) for e in edits)
    return MaskedText("".join(parts), spans, tuple(edits), carry)
