"""Digits written as digits: phone numbers, payment cards and national identifiers, by their shape.

``+44 20 7946 0958``, ``(415) 555-1234``, ``415-555-1234``, ``1-800-555-0199``, ``555-1234``; cards of
13-19 digits (bare, or in groups split by spaces or dashes) that pass the Luhn check; US SSN
``123-45-6789``, Canadian SIN ``123-456-789``, a bare nine-digit run. Ordinary numbers stay: the rules ask
for a phone, card or id *shape* (group lengths and separators), never just "many digits": commas
(thousands), colons (times) and slashes (dates) never join digit groups, and a run right after a currency
sign is a price.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.words import word_set, words_before


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
_PHONE_CUES = word_set("number phone call cell mobile line dial extension ext text reach")


def written_numbers(text: str) -> Iterator[Find]:
    for m in _NUMBER_RUN.finditer(text):
        groups = _groups(text, m.start(), m.end())
        cue = any(w in _PHONE_CUES for w in words_before(text, m.start(), 4))
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
) -> Iterator[Find]:
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
                yield Find(kind, start, groups[j - 1].end)
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
