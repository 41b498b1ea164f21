"""Word-level helpers the rules share: cue words before a position, filler words after one.

Every look is over a bounded stretch of text (``LOOK_BACK_CHARS``, ``LOOK_AHEAD_CHARS``), so a rule that
looks once per find or cue costs constant work each, and masking stays linear in the text's length.
"""

from __future__ import annotations

import re

# How far back a cue word is looked for. A cue counts only within its last few words, and words longer
# than this are no cue: looking back a bounded stretch keeps the work per find constant.
LOOK_BACK_CHARS = 120
# How far after a cue ("date of birth", "security code") the value it announces is looked for.
LOOK_AHEAD_CHARS = 160

WORD = re.compile(r"[\w-]+")
_WORD_OR_APOSTROPHE = re.compile(r"[\w'’-]+")


def word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


def words_before(text: str, pos: int, count: int) -> list[str]:
    """The last ``count`` words (runs of letters, digits, ``_`` and ``-``) of ``text[:pos]``, lower case."""
    words = WORD.findall(text, max(pos - LOOK_BACK_CHARS, 0), pos)
    return [w.lower() for w in words[-count:]]


def is_word_char(text: str, i: int) -> bool:
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


def skip_fillers(text: str, pos: int, fillers: frozenset[str], *, max_words: int = 6) -> int:
    """Where the first word at or after ``pos`` that is not one of ``fillers`` starts.

    Blanks and punctuation between words are skipped too ("DOB: 14/03/1985", "is, um, 123"); at most
    ``max_words`` fillers are skipped.
    """
    end = min(pos + LOOK_AHEAD_CHARS, len(text))
    skipped = 0
    while pos < end:
        while pos < end and not (text[pos].isalnum() or text[pos] in "'’"):
            if text[pos] in "$€£¥":
                return pos
            pos += 1
        m = _WORD_OR_APOSTROPHE.match(text, pos, end)
        if m is None or m.group().lower().replace("’", "'") not in fillers or skipped == max_words:
            return pos
        skipped += 1
        pos = m.end()
    return pos
