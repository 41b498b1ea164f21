"""A date of birth, after a cue: "date of birth", "DOB", "birth date", "born on", "my birthday is".

The date may be written ("14/03/1985", "1985-03-14", "March 14th, 1985", "14 March 1985") or spoken ("the
fourteenth of March nineteen eighty five"); the year may be missing ("my birthday is March 14th"). Only
the date is masked, the cue stays. A date without a cue is an ordinary date ("we go live on March 14th",
"the contract ends 31/12/2026") and stays, and so does a bare year ("born in 1985").
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.words import skip_fillers, word_set

_CUE = re.compile(
    r"\b(?:date\s{1,3}of\s{1,3}birth|d\.?\s?o\.?\s?b\b\.?|birth\s{0,3}date|birthday|born(?:\s{1,3}on)?)",
    re.IGNORECASE,
)
_FILLERS = word_set(
    "is was it's its it that's thats my his her their your our date of birth on um uh er erm well so "
    "yeah yes okay ok actually please would be i'm im i was is"
)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_UNIT = r"(?:one|two|three|four|five|six|seven|eight|nine)"
_TEEN = r"(?:ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"
_TENS = r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
_ORDINAL_UNIT = r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)"
_ORDINAL = (
    rf"(?:{_ORDINAL_UNIT}|tenth|eleventh|twelfth|thirteenth|fourteenth|fifteenth|sixteenth|seventeenth"
    rf"|eighteenth|nineteenth|twentieth|thirtieth|(?:twenty|thirty)[\s-]{_ORDINAL_UNIT})"
)
_SEP = r"[\s-]{1,2}"
_DAY = (
    rf"(?:\d{{1,2}}(?:st|nd|rd|th)?|{_ORDINAL}|(?:twenty|thirty){_SEP}{_UNIT}|twenty|thirty|{_TEEN}|{_UNIT})"
)
_YEAR = (
    r"(?:\d{4}|'\d{2}"
    rf"|(?:nineteen|twenty){_SEP}(?:{_TENS}(?:{_SEP}{_UNIT})?|{_TEEN}|(?:oh|o){_SEP}{_UNIT}|hundred)"
    rf"|two{_SEP}thousand(?:{_SEP}and)?(?:{_SEP}(?:{_TENS}(?:{_SEP}{_UNIT})?|{_TEEN}|{_UNIT}))?)"
)
_DATE = re.compile(
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"  # 14/03/1985, 1985-03-14
    rf"|(?:the\s{{1,3}})?{_DAY}(?:\s{{1,3}}of)?\s{{1,3}}{_MONTH}(?:,?\s{{1,3}}(?:of\s{{1,3}}|in\s{{1,3}})?{_YEAR})?"
    rf"|{_MONTH}\s{{1,3}}(?:the\s{{1,3}})?{_DAY}(?:,?\s{{1,3}}{_YEAR})?)"
    r"(?![\w/-])",
    re.IGNORECASE,
)


def dates_of_birth(text: str) -> Iterator[Find]:
    for cue in _CUE.finditer(text):
        start = skip_fillers(text, cue.end(), _FILLERS)
        m = _DATE.match(text, start)
        if m is not None:
            yield Find(PiiKind.DATE_OF_BIRTH, m.start(), m.end())
