"""The UK National Insurance number: two letters, six digits, a letter A-D.

``QQ 12 34 56 C``, ``AB123456C``, ASR's lower case ``qq123456c``, and spelled out: ``Q Q one two three
four five six C``. The letters follow HMRC's rules (no D, F, I, Q, U or V, no O second), except ``QQ``, the
specimen printed on forms. Lower-case letters before spaced digits can be an ordinary word ("at 12 34 56
a"), so then the two letters must not be a common word, or a cue ("national insurance", "NI number")
must come before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.spoken import digit_run_at
from chopper_service.pii.words import word_set, words_before

_WRITTEN = re.compile(
    r"(?<![\w-])(?P<prefix>[A-Za-z]{2})(?P<gap> ?)\d{2}( ?)\d{2}\3\d{2} ?(?P<suffix>[A-Da-d])(?![\w-])"
)
# Two letters, as one word ("QQ") or spelled ("Q Q", "Q. Q."), before a number said as words.
_SPOKEN_PREFIX = re.compile(r"(?<![\w'’-])(?:(?P<pair>[A-Za-z]{2})|(?P<a>[A-Za-z])\.? (?P<b>[A-Za-z])\.?) ")
_SUFFIX = re.compile(r"[ ,]{0,2}(?P<suffix>[A-Da-d])\.?(?![\w-])")
_FIRST_LETTERS = frozenset("ABCEGHJKLMNOPRSTWXYZ")
_SECOND_LETTERS = frozenset("ABCEGHJKLMNPRSTWXYZ")
_COMMON_TWO_LETTER_WORDS = word_set("am an as at be by go he me my no oh ok on or so to we ye ya yo hi ho ha")
_CUES = word_set("insurance ni nino nin")


def uk_national_insurance(text: str) -> Iterator[Find]:
    for m in _WRITTEN.finditer(text):
        spaced = bool(m["gap"]) or " " in m.group()
        if _letters_ok(text, m.start(), m["prefix"], spaced=spaced):
            yield Find(PiiKind.NATIONAL_ID, m.start(), m.end())
    yield from _spoken(text)


def _spoken(text: str) -> Iterator[Find]:
    pos = 0
    # Searched again from the next character after a miss: "it's Q Q one ..." first matches "s Q".
    while (m := _SPOKEN_PREFIX.search(text, pos)) is not None:
        pos = m.start() + 1
        run = digit_run_at(text, m.end(), max_tokens=12)
        if run is None or len(run.digits) != 6 or not run.spoken:
            continue  # written digits are _WRITTEN's
        suffix = _SUFFIX.match(text, run.end)
        prefix = m["pair"] or m["a"] + m["b"]
        if suffix is not None and _letters_ok(text, m.start(), prefix, spaced=m["pair"] is not None):
            yield Find(PiiKind.NATIONAL_ID, m.start(), suffix.end())
            pos = suffix.end()


def _letters_ok(text: str, start: int, prefix: str, *, spaced: bool) -> bool:
    upper = prefix.upper()
    if upper != "QQ" and (upper[0] not in _FIRST_LETTERS or upper[1] not in _SECOND_LETTERS):
        return False
    if prefix.isupper() or not spaced or prefix.lower() not in _COMMON_TWO_LETTER_WORDS:
        return True
    return any(w in _CUES for w in words_before(text, start, 8))
