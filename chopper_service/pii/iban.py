"""International bank account numbers: ``GB82 WEST 1234 5698 7654 32``, ``DE89370400440532013000``.

Written in one piece or in the printed groups of four, any case (ASR may write "gb82 west ..."). An IBAN
has its country's length and passes the ISO 7064 mod-97 check, which a random code of letters and digits
fails 96 times in 97: codes, references and order numbers that only look like one stay.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import Find, PiiKind

# The length of an IBAN, by country (the SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_MAX_IBAN = max(IBAN_LENGTHS.values())

# The start of an IBAN: country and check digits, then the rest in one piece or a first group of four.
_IBAN_START = re.compile(r"(?<![\w-])[A-Za-z]{2}\d{2}(?=[A-Za-z0-9]|[ -][A-Za-z0-9]{4})")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")


def ibans(text: str) -> Iterator[Find]:
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group()[:2].upper())
        if length is None:
            continue
        end = _iban_end(text, m.start(), length)
        if end is not None and iban_valid(re.sub(r"[ -]", "", text[m.start() : end])):
            yield Find(PiiKind.IBAN, m.start(), end)


def _iban_end(text: str, start: int, length: int) -> int | None:
    """Where an IBAN of ``length`` characters starting at ``start`` ends, or None when none fits there.

    One piece of exactly ``length``, or groups of four split by one blank or dash (the last 1-4 long).
    """
    first = _ALNUM_RUN.match(text, start, start + _MAX_IBAN + 1)
    if first is None or _word_goes_on(text, first.end()):
        return None
    if first.end() - start == length:
        return first.end()
    if first.end() - start != 4:
        return None
    taken, pos = 4, first.end()
    while taken < length:
        if pos >= len(text) or text[pos] not in " -":
            return None
        group = _ALNUM_RUN.match(text, pos + 1, pos + 5)
        if group is None or _word_goes_on(text, group.end()):
            return None
        size = group.end() - group.start()
        if size != 4 and taken + size != length:
            return None  # only the last group may be short
        taken, pos = taken + size, group.end()
    return pos if taken == length else None


def _word_goes_on(text: str, pos: int) -> bool:
    return pos < len(text) and (text[pos].isalnum() or text[pos] == "_")


def iban_valid(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod-97-10: the country and check digits moved to the end, letters as 10..35."""
    iban = iban.upper()
    if not (iban[:2].isalpha() and iban[2:4].isdigit() and iban.isalnum()):
        return False
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1
