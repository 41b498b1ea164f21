"""Masks personal data in transcript text before it leaves the chopper.

What is found, written or spoken the way an ASR writes it:

- e-mail addresses: ``john.smith@example.com`` and ``john dot smith at example dot com``;
- phone numbers: ``+44 20 7946 0958``, ``(415) 555-1234``, ``415-555-1234``, ``1-800-555-0199``,
  ``555-1234``, and spelled digits ("four one five five five five one two three four");
- payment card numbers: 13-19 digits (bare, or in groups split by spaces or dashes) that pass the Luhn
  check; a digit run that fails it is not a card;
- national identifiers: US SSN ``123-45-6789``, Canadian SIN ``123-456-789``, a bare nine-digit run, the
  UK National Insurance number ``QQ 12 34 56 C``, and nine spelled digits.

Each find is replaced by a mask (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[NATIONAL_ID]``) and reported as a
span of the masked text. Ordinary numbers stay: prices (``$5,000``, "twenty thousand dollars"), years,
times, quantities. The rules for written digits therefore ask for a phone, card or id *shape* (group
lengths and separators), never just "many digits": commas (thousands), colons (times) and slashes
(dates) never join digit groups, and a run right after a currency sign is a price.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass


class PiiKind(enum.Enum):
    """What was masked; the value is the mask written into the text."""

    EMAIL = "[EMAIL]"
    PHONE = "[PHONE]"
    CARD = "[CARD]"
    NATIONAL_ID = "[NATIONAL_ID]"

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
class _Find:
    """A piece of the original text to mask (offsets into the original)."""

    kind: PiiKind
    start: int
    end: int


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
    """The text with PII replaced, the spans of the masks, and a way back to original offsets."""

    text: str
    spans: tuple[PiiSpan, ...]
    _edits: tuple[_Edit, ...] = ()

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


def mask_pii(text: str) -> MaskedText:
    """Replace every e-mail, phone, card and national-id number in ``text`` with its mask."""
    finds = [
        *_written_emails(text),
        *_spoken_emails(text),
        *_written_numbers(text),
        *_uk_national_insurance(text),
        *_spoken_numbers(text),
    ]
    return _apply(text, _resolve_overlaps(finds))


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of payment card numbers (every card number passes it; 90 % of typos fail it)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ------------------------------------------------------------------------------------------- assembly


def _resolve_overlaps(finds: list[_Find]) -> list[_Find]:
    """Keep the longest finds that do not overlap (a spoken e-mail beats the digits inside it)."""
    chosen: list[_Find] = []
    for find in sorted(finds, key=lambda f: (-(f.end - f.start), f.start)):
        if all(find.end <= c.start or find.start >= c.end for c in chosen):
            chosen.append(find)
    return sorted(chosen, key=lambda f: f.start)


def _apply(text: str, finds: list[_Find]) -> MaskedText:
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
    return MaskedText("".join(parts), spans, tuple(edits))


# -------------------------------------------------------------------------------------------- e-mails


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_WORD = re.compile(r"[\w-]+")
# How far back a cue word is looked for. A cue counts only within its last few words, and words longer
# than this are no cue: looking back a bounded stretch keeps the work per find constant.
_LOOK_BACK_CHARS = 120


def _words_before(text: str, pos: int, count: int) -> list[str]:
    """The last ``count`` words (runs of letters, digits, ``_`` and ``-``) of ``text[:pos]``, lower case."""
    words = _WORD.findall(text, max(pos - _LOOK_BACK_CHARS, 0), pos)
    return [w.lower() for w in words[-count:]]


def _is_word_char(text: str, i: int) -> bool:
    return i >= 0 and (text[i].isalnum() or text[i] == "_")


_WRITTEN_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][\w.%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*\.)+[A-Za-z]{2,}\b")

# Top-level domains a spoken address may end in. A closed list, because "at" and "dot" are ordinary words:
# without it "we met at noon dot" or "at the dot com boom" would look like addresses.
_TLDS = _word_set(
    "com net org edu gov mil int io co ai app dev info biz me us uk ca au nz ie de fr es it nl be ch at se "
    "no dk fi pl pt br mx in jp cn kr sg hk za eu tv"
)
_MAIL_PROVIDERS = _word_set(
    "gmail googlemail yahoo hotmail outlook live msn icloud me mac aol proton protonmail gmx zoho yandex "
    "comcast verizon att"
)
_EMAIL_CUES = _word_set("email e-mail mail address emailed e-mailed reach write")
# Words that cannot be the user part or the first domain label: "reach me at acme dot com" is a website.
_NOT_ADDRESS_WORDS = _word_set(
    "a an the this that my your our their his her its me us him them you it is was be at to of in on for "
    "and or but so we i they he she"
)
_SPOKEN_LOCAL = r"[a-z0-9](?:[a-z0-9._+-]*[a-z0-9])?"
_SPOKEN_EMAIL = re.compile(
    rf"\b(?P<local>{_SPOKEN_LOCAL}(?:\s+(?:dot|underscore|dash|hyphen)\s+{_SPOKEN_LOCAL})*)"
    r"(?:\s+at\s+|\s*@\s*)"
    r"(?P<domain>[a-z0-9][a-z0-9-]*(?:(?:\s+dot\s+|\.)[a-z0-9][a-z0-9-]*)+)\b",
    re.IGNORECASE,
)
_DOMAIN_SEP = re.compile(r"\s+dot\s+|\.", re.IGNORECASE)
_LOCAL_SEP = re.compile(r"\s+(?:dot|underscore|dash|hyphen)\s+", re.IGNORECASE)


def _written_emails(text: str) -> Iterator[_Find]:
    for m in _WRITTEN_EMAIL.finditer(text):
        yield _Find(PiiKind.EMAIL, m.start(), m.end())


def _spoken_emails(text: str) -> Iterator[_Find]:
    for m in _SPOKEN_EMAIL.finditer(text):
        if _plausible_spoken_email(text, m):
            yield _Find(PiiKind.EMAIL, m.start(), m.end())


def _plausible_spoken_email(text: str, m: re.Match[str]) -> bool:
    """An address needs a real TLD and some sign it is an e-mail, since "at" and "dot" are common words."""
    labels = [label.lower() for label in _DOMAIN_SEP.split(m["domain"])]
    local_parts = [p.lower() for p in _LOCAL_SEP.split(m["local"])]
    if labels[-1] not in _TLDS or labels[0] in _NOT_ADDRESS_WORDS or local_parts[0] in _NOT_ADDRESS_WORDS:
        return False
    dotted_local = (
        len(local_parts) > 1 or any(c in m["local"] for c in "._") or any(c.isdigit() for c in m["local"])
    )
    cue_before = any(w in _EMAIL_CUES for w in _words_before(text, m.start(), 6))
    return dotted_local or cue_before or labels[0] in _MAIL_PROVIDERS or "@" in m.group(0)


# ------------------------------------------------------------------------------------ written numbers

# Digit groups joined by one space, dash or dot, a group optionally in parentheses ("(415)", "(0)"),
# optionally led by "+". Not after a letter, digit or currency sign, not part of a decimal or a
# thousands-separated number ("5,000", "4.99"), not before a letter or "%".
_GROUP = r"(?:\(\d{1,5}\)|\d+)"
_NUMBER_RUN = re.compile(
    rf"(?<![\w$€£¥+])(?<!\d[.,])\+?{_GROUP}(?:(?:[ .-]|(?<=\)))(?=[(\d]){_GROUP})*(?![\w%]|[.,]\d)"
)
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class _Group:
    digits: str
    start: int  # in the text, parentheses included
    end: int


# Words that announce a phone number. After one of them (within a few words), a local number without an
# area code counts as a phone even unformatted: Whisper may write a spoken "four five five, one five three
# four" as "4551534" or "455 1534", shapes that alone are too often quantities.
_PHONE_CUES = _word_set("number phone call cell mobile line dial extension ext text reach")


def _written_numbers(text: str) -> Iterator[_Find]:
    for m in _NUMBER_RUN.finditer(text):
        groups = _groups(text, m.start(), m.end())
        cue = any(w in _PHONE_CUES for w in _words_before(text, m.start(), 4))
        yield from _classify_windows(
            text, groups, plus=text[m.start()] == "+", run_start=m.start(), phone_cue=cue
        )


def _groups(text: str, start: int, end: int) -> list[_Group]:
    out = []
    for d in _DIGITS.finditer(text, start, end):
        g_start = d.start() - 1 if d.start() > start and text[d.start() - 1] == "(" else d.start()
        g_end = d.end() + 1 if d.end() < end and text[d.end()] == ")" else d.end()
        out.append(_Group(d.group(), g_start, g_end))
    return out


# No rule masks more digits than a card has (19): a window of more digits is never PII, so only windows
# up to that many digits are classified. That bounds the work per group, so a long run of digit groups
# costs linear time, not cubic (every window of a run, each classified in time of its length).
MAX_PII_DIGITS = 19


def _classify_windows(
    text: str, groups: list[_Group], *, plus: bool, run_start: int, phone_cue: bool = False
) -> Iterator[_Find]:
    """Classify the whole run, else its longest sub-runs of whole groups, left to right.

    A sentence such as "it's 2 415 555 1234" holds a phone number inside a longer run of digit groups.
    """
    i = 0
    while i < len(groups):
        longest, digits = i, 0
        while longest < len(groups) and digits + len(groups[longest].digits) <= MAX_PII_DIGITS:
            digits += len(groups[longest].digits)
            longest += 1
        for j in range(longest, i, -1):
            start = run_start if i == 0 and plus else groups[i].start
            kind = _classify_written(
                text[start : groups[j - 1].end],
                groups[i:j],
                plus=plus and i == 0,
                phone_cue=phone_cue and i == 0,
            )
            if kind is not None:
                yield _Find(kind, start, groups[j - 1].end)
                i = j
                break
        else:
            i += 1


def _classify_written(
    raw: str, groups: list[_Group], *, plus: bool, phone_cue: bool = False
) -> PiiKind | None:
    digits = "".join(g.digits for g in groups)
    n = len(digits)
    lens = [len(g.digits) for g in groups]
    parens = "(" in raw
    seps = set(re.sub(r"[\d()+]", "", raw))  # the joining characters used: " ", "-", "."
    if plus:
        return PiiKind.PHONE if 8 <= n <= 15 else None
    if _is_card(digits, lens, seps, parens):
        return PiiKind.CARD
    if not parens and _is_national_id(lens, seps):
        return PiiKind.NATIONAL_ID
    if _is_phone(digits, lens, seps, parens):
        return PiiKind.PHONE
    if phone_cue and lens in ([7], [3, 4]) and seps <= {" "}:  # "call me at 4551534" / "455 1534"
        return PiiKind.PHONE
    return None


def _is_card(digits: str, lens: list[int], seps: set[str], parens: bool) -> bool:
    # Cards are printed in groups of 4 (Amex 4-6-5, Diners 4-6-4): small groups are something else.
    grouped_like_card = len(lens) == 1 or (all(n >= 3 for n in lens) and len(seps) == 1 and "." not in seps)
    return 13 <= len(digits) <= 19 and not parens and grouped_like_card and luhn_valid(digits)


def _is_national_id(lens: list[int], seps: set[str]) -> bool:
    if lens == [9]:
        return True
    if lens == [3, 2, 4]:  # US SSN
        return seps in ({"-"}, {" "})
    if lens == [3, 3, 3]:  # Canadian SIN; with spaces it is too often three quantities
        return seps == {"-"}
    return False


def _is_phone(digits: str, lens: list[int], seps: set[str], parens: bool) -> bool:
    # Spaces alone (or nothing) join numbers that are not phones too, so those must look like a real
    # North American number: area code and exchange never start with 0 or 1.
    formatted = parens or bool(seps & {"-", "."})
    if lens in ([3, 3, 4], [10]) or (lens in ([1, 3, 3, 4], [11]) and digits[0] == "1"):
        local = digits[-10:]
        return formatted or (local[0] in "23456789" and local[3] in "23456789")
    if lens == [3, 4]:  # 555-1234; but "500-1000 seats" is a range of round numbers
        return seps in ({"-"}, {"."}) and not (digits[1:3] == "00" or digits[5:] == "00")
    # Trunk-prefixed national numbers elsewhere: "020 7946 0958", "07700 900123".
    return digits[0] == "0" and 10 <= len(digits) <= 11 and 2 <= len(lens) <= 4 and min(lens) >= 2


_UK_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")


def _uk_national_insurance(text: str) -> Iterator[_Find]:
    for m in _UK_NINO.finditer(text):
        yield _Find(PiiKind.NATIONAL_ID, m.start(), m.end())


# ------------------------------------------------------------------------------------- spoken numbers

_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEATS = {"double": 2, "triple": 3}
_NUMBER_TOKEN = re.compile(r"[A-Za-z]+|\d+")
# Between two tokens of one spoken number: spaces, and the commas, dashes and full stops ASR scatters in.
_JOINER = re.compile(r"[\s,.-]{1,3}")


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int


def _spoken_numbers(text: str) -> Iterator[_Find]:
    for run in _digit_word_runs(text):
        if run[0].text in ("oh", "o") and text[run[0].end : run[0].end + 1] in (",", "!"):
            run = run[1:]  # "Oh, ..." is an interjection, not a zero
        if not run:
            continue
        digits = _spoken_digits(run)
        if digits is None:
            continue
        kind = _classify_spoken(digits, plus=_said_plus(text, run[0].start))
        if kind is not None:
            yield _Find(kind, run[0].start, run[-1].end)


def _digit_word_runs(text: str) -> Iterator[list[_Token]]:
    """Maximal runs of digit words, "double"/"triple", "hundred" and numerals, joined by spaces or ,-."""
    run: list[_Token] = []
    for m in _NUMBER_TOKEN.finditer(text):
        tok = _Token(m.group().lower(), m.start(), m.end())
        joined = bool(run) and _JOINER.fullmatch(text[run[-1].end : tok.start]) is not None
        if _is_number_token(text, tok) and (joined or not run):
            run.append(tok)
            continue
        if run:
            yield run
        run = [tok] if _is_number_token(text, tok) else []
    if run:
        yield run


def _is_number_token(text: str, tok: _Token) -> bool:
    if tok.text.isdigit():
        return tok.start == 0 or text[tok.start - 1] not in "$€£¥"
    return tok.text in _DIGIT_WORDS or tok.text in _REPEATS or tok.text == "hundred"


def _spoken_digits(run: list[_Token]) -> str | None:
    """The digits a run spells, or None when it holds no spelled digit (then it is a written number)."""
    if not any(t.text in _DIGIT_WORDS for t in run):
        return None
    out: list[str] = []
    repeat = 1
    previous = ""
    for tok in run:
        if tok.text in _REPEATS:
            repeat = _REPEATS[tok.text]
            continue
        if tok.text == "hundred":
            # "one eight hundred ..." is 1-800: "hundred" after a single spelled digit adds two zeros.
            if previous in _DIGIT_WORDS:
                out.append("00")
            previous = tok.text
            continue
        out.append((_DIGIT_WORDS.get(tok.text) or tok.text) * repeat)
        repeat = 1
        previous = tok.text
    return "".join(out)


def _said_plus(text: str, start: int) -> bool:
    """ "plus" (a word) right before ``start``, blanks between: "plus four four ..." is +44."""
    end = start
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return text[max(end - 4, 0) : end].lower() == "plus" and (end == 4 or not _is_word_char(text, end - 5))


def _classify_spoken(digits: str, *, plus: bool) -> PiiKind | None:
    n = len(digits)
    if plus:
        return PiiKind.PHONE if 8 <= n <= 15 else None
    if n == 9:
        return PiiKind.NATIONAL_ID
    if 13 <= n <= 19 and luhn_valid(digits):
        return PiiKind.CARD
    if n == 7 or 10 <= n <= 15:
        return PiiKind.PHONE
    return None
