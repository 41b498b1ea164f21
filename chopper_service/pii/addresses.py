"""Street addresses: a house number, a street name and a street type, and what follows that belongs to it.

"221B Baker Street", "1600 Pennsylvania Avenue NW", "42 elm st", "12 Station Road, Leeds", "one two three
Main Street" (a house number said digit by digit), "350 5th Avenue, New York, NY 10118". A street type
("Street", "Road", "Ave", ...) must follow the name: a number before ordinary nouns ("40 seats", "5 users on
the team") is never an address. A street type used as part of a compound ("3 main street-facing shops",
"2 high street stores") is not one either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.words import word_set, words_before

_STREET_TYPES = (
    r"(?:street|st|road|rd|avenue|ave|av|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|way|terrace"
    r"|crescent|square|parkway|pkwy|highway|hwy|circle|grove|gardens|mews|alley|plaza)"
)
_ABBREVIATED_TYPES = word_set("st rd ave av blvd ln dr ct pl pkwy hwy")
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"
# A house number: 1-5 digits, maybe a letter ("221B"), or two to five digits said one by one.
_HOUSE_NUMBER = rf"(?:\d{{1,5}}[a-z]?|{_DIGIT_WORD}(?:[\s-]{{1,2}}{_DIGIT_WORD}){{1,4}})"
# A word of a street's name: letters ("Baker", "elm", "St." in "St. John's"), or an ordinal ("5th").
_NAME_WORD = r"(?:[a-z][a-z'’.]{0,24}|\d{1,3}(?:st|nd|rd|th))"
_DIRECTION = r"(?:north|south|east|west|n\.?e|n\.?w|s\.?e|s\.?w|[NSEW]\b)"
_ADDRESS = re.compile(
    rf"(?<![\w$€£¥.,/-])(?P<number>{_HOUSE_NUMBER})\s{{1,3}}"
    rf"(?P<name>{_NAME_WORD}(?:\s{{1,3}}{_NAME_WORD}){{0,2}}?)\s{{1,3}}"
    rf"(?P<type>{_STREET_TYPES})\b(?P<dot>\.)?"
    rf"(?P<direction>\s{{1,3}}{_DIRECTION}\b)?",
    re.IGNORECASE,
)
# After the street: ", Leeds", ", New York, NY 10118", " Leeds LS1 4AP" (capitalised places, a US state,
# a ZIP or UK postcode), taken only while they look like one.
_PLACE = re.compile(r",?\s{1,3}(?P<place>[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)(?![\w'-])")
_STATE_OR_CODE = re.compile(
    r",?\s{1,3}(?:[A-Z]{2}(?:\s\d{5}(?:-\d{4})?)?|\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})(?![\w-])"
)
# Words that cannot be part of a street's name: "in 2 of the main roads", "5 users on the road".
_NOT_NAME_WORDS = word_set(
    "a an the this that these those my your our their his her its of on in at to for from with by and or "
    "but so is are was were be been has have had do does did we you they he she it i me us them more most "
    "less other per each every all some any no not new one two three four five six seven eight nine ten "
    "zero oh days weeks months years hours minutes times people users seats units items"
)
# Not places: words a sentence goes on with after an address ("42 Elm Street, Thanks", "... Road. So").
_NOT_PLACES = word_set(
    "and but so or then thanks thank yes yeah no okay ok please right well sure great also because if "
    "when where which that this it is i we you they he she there here now just sorry in on at for to from "
    "with by of"
)
# Street types that are ordinary words too ("1 simple way", "3 different place"): after one of them the
# name must be capitalised, or an address cue come before the number.
_AMBIGUOUS_TYPES = word_set("way place pl court ct square circle drive dr plaza grove gardens terrace")
_ADDRESS_CUES = word_set(
    "address live lives living lived located location at to ship shipped deliver delivery send sent mail "
    "post office house home flat apartment moved move headquarters hq based"
)
# A plural or -ing word right after the street type makes it a modifier: "2 high street stores".
_COMPOUND_TAIL = re.compile(r"(?:-|\s{1,3}[a-z]+(?:s|ing)\b)")
_ALLOWED_AFTER = word_set("is was has its this thanks as us yes plus please does")
_WORD_AFTER = re.compile(r"\s{1,3}([a-z]+)")


def addresses(text: str) -> Iterator[Find]:
    for m in _ADDRESS.finditer(text):
        if not _plausible(text, m):
            continue
        end = m.end()
        if m["dot"] and not m["direction"] and m["type"].lower() not in _ABBREVIATED_TYPES:
            end -= 1  # "221B Baker Street." ends a sentence; "42 Elm St." keeps its abbreviation's dot
        yield Find(PiiKind.ADDRESS, m.start(), _extend_with_place(text, end))


def _plausible(text: str, m: re.Match[str]) -> bool:
    name_words = [w.lower().strip(".'’") for w in m["name"].split()]
    if any(w in _NOT_NAME_WORDS for w in name_words):
        return False
    if (
        m["type"].lower() in _AMBIGUOUS_TYPES
        and not m["name"][0].isupper()
        and not any(w in _ADDRESS_CUES for w in words_before(text, m.start(), 6))
    ):
        return False
    tail = _COMPOUND_TAIL.match(text, m.end())
    if tail is not None:
        after = _WORD_AFTER.match(text, m.end())
        if after is None or after.group(1).lower() not in _ALLOWED_AFTER:
            return False
    return True


def _extend_with_place(text: str, end: int) -> int:
    """Take a place name ("Leeds", "New York") and a state or postcode after the street, if there."""
    place = _PLACE.match(text, end)
    if place is not None and not any(w.lower() in _NOT_PLACES for w in place["place"].split()):
        end = place.end()
    for _ in range(2):  # "NY 10118", or "LS1 4AP"
        code = _STATE_OR_CODE.match(text, end)
        if code is None:
            break
        end = code.end()
    return end
