"""Numbers spoken digit by digit, the way ASR writes them: "four one five, five five five, one two three
four", "double five", "one eight hundred", "plus four four ...", digit words mixed with numerals.

A run of nine digits is a national id, 13-19 that pass the Luhn check a card, 7 or 10-15 a phone number.
The readers here (``digit_run_at``, ``last_digit_run``) also serve the rules that want the digits after a
cue: security codes, the UK National Insurance number, the rest of a card number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.numbers import luhn_valid
from chopper_service.pii.words import is_word_char

DIGIT_WORDS = {
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
REPEATS = {"double": 2, "triple": 3}
_NUMBER_TOKEN = re.compile(r"[A-Za-z]+|\d+")
# Between two tokens of one spoken number: spaces, and the commas, dashes and full stops ASR scatters in.
_JOINER = re.compile(r"[\s,.-]{1,3}")


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int


def spoken_numbers(text: str) -> Iterator[Find]:
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
            yield Find(kind, run[0].start, run[-1].end)


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
    return tok.text in DIGIT_WORDS or tok.text in REPEATS or tok.text == "hundred"


def _spoken_digits(run: list[_Token]) -> str | None:
    """The digits a run spells, or None when it holds no spelled digit (then it is a written number)."""
    if not any(t.text in DIGIT_WORDS for t in run):
        return None
    out: list[str] = []
    repeat = 1
    previous = ""
    for tok in run:
        if tok.text in REPEATS:
            repeat = REPEATS[tok.text]
            continue
        if tok.text == "hundred":
            # "one eight hundred ..." is 1-800: "hundred" after a single spelled digit adds two zeros.
            if previous in DIGIT_WORDS:
                out.append("00")
            previous = tok.text
            continue
        out.append((DIGIT_WORDS.get(tok.text) or tok.text) * repeat)
        repeat = 1
        previous = tok.text
    return "".join(out)


def _said_plus(text: str, start: int) -> bool:
    """ "plus" (a word) right before ``start``, blanks between: "plus four four ..." is +44."""
    end = start
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return text[max(end - 4, 0) : end].lower() == "plus" and (end == 4 or not is_word_char(text, end - 5))


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


# ---------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class DigitRun:
    """Digits said or written one after another, and where they are in the text."""

    digits: str
    start: int
    end: int
    spoken: bool
    """At least one digit was a word ("four"), not a numeral."""


# A reader never takes more tokens than this: the longest thing read is a card (19 digits, one a token).
MAX_RUN_TOKENS = 24


def _token_digits(tok: str) -> str | None:
    """The digits of one token of a run (a numeral or a digit word); None for anything else."""
    if tok.isdigit():
        return tok
    return DIGIT_WORDS.get(tok)


def digit_run_at(text: str, pos: int, *, max_tokens: int = MAX_RUN_TOKENS) -> DigitRun | None:
    """The run of digit words, "double"/"triple" and numerals that starts at ``pos``, or None.

    Tokens are joined as in a spoken number (blanks, commas, dashes, full stops); at most ``max_tokens``
    are read, so the work is bounded whatever follows.
    """
    out: list[str] = []
    repeat = 1
    end = pos
    spoken = False
    cursor = pos
    for _ in range(max_tokens):
        m = _NUMBER_TOKEN.match(text, cursor)
        if m is None or (cursor == pos and is_word_char(text, pos - 1)) or is_word_char(text, m.end()):
            break
        tok = m.group().lower()
        if tok in REPEATS and repeat == 1:
            repeat = REPEATS[tok]
        else:
            digits = _token_digits(tok)
            if digits is None or (tok.isdigit() and cursor == pos and _after_currency(text, pos)):
                break
            spoken = spoken or not tok.isdigit()
            out.append(digits * repeat)
            repeat = 1
            end = m.end()
        joiner = _JOINER.match(text, m.end())
        if joiner is None:
            break
        cursor = joiner.end()
    if not out:
        return None
    return DigitRun("".join(out), pos, end, spoken)


def _after_currency(text: str, pos: int) -> bool:
    return pos > 0 and text[pos - 1] in "$€£¥"


# How far back from the end of a text ``last_digit_run`` looks: a card's digits, spoken, fit in it.
_TAIL_CHARS = 240


def last_digit_run(text: str, end: int) -> DigitRun | None:
    """The run of digit words and numerals that ends exactly at ``end``, or None (bounded look back)."""
    tail_start = max(end - _TAIL_CHARS, 0)
    while 0 < tail_start < end and is_word_char(text, tail_start - 1):
        tail_start += 1  # start on a word boundary
    tokens = list(_NUMBER_TOKEN.finditer(text, tail_start, end))
    if not tokens or tokens[-1].end() != end or _token_digits(tokens[-1].group().lower()) is None:
        return None
    first = len(tokens) - 1
    while first > 0 and len(tokens) - first < MAX_RUN_TOKENS:
        before, tok = tokens[first - 1], tokens[first]
        if _token_digits(before.group().lower()) is None and before.group().lower() not in REPEATS:
            break
        if _JOINER.fullmatch(text, before.end(), tok.start()) is None:
            break
        first -= 1
    return digit_run_at(text, tokens[first].start(), max_tokens=len(tokens) - first)
