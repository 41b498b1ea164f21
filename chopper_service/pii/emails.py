"""E-mail addresses, written (``john.smith@example.com``) and spoken the way ASR writes them.

Spoken: ``john dot smith at example dot com``, ``jane at acme corp dot com`` (a domain label said as
several words), ``j smith at acme dash corp dot co dot uk`` (an initial, "dash" inside a label). "at" and
"dot" are ordinary words, so a spoken address needs a real top-level domain and some sign that it is an
address: an e-mail cue before it, a dotted or numbered user part, a mail provider, or a user part that is
a name rather than an ordinary word ("our site at acme dot com", "we met at the office dot com launch"
stay as they are).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import Find, PiiKind
from chopper_service.pii.words import word_set, words_before

_WRITTEN_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][\w.%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*\.)+[A-Za-z]{2,}\b")

# Top-level domains a spoken address may end in. A closed list, because "at" and "dot" are ordinary words:
# without it "we met at noon dot" or "at the dot com boom" would look like addresses.
_TLDS = word_set(
    "com net org edu gov mil int io co ai app dev info biz me us uk ca au nz ie de fr es it nl be ch at se "
    "no dk fi pl pt br mx in jp cn kr sg hk za eu tv"
)
_MAIL_PROVIDERS = word_set(
    "gmail googlemail yahoo hotmail outlook live msn icloud me mac aol proton protonmail gmx zoho yandex "
    "comcast verizon att"
)
_EMAIL_CUES = word_set("email e-mail mail address emailed e-mailed reach write")
# Words that cannot be the user part or a domain word: "reach me at acme dot com" is a website.
_NOT_ADDRESS_WORDS = word_set(
    "a an the this that my your our their his her its me us him them you it is was be at to of in on for "
    "and or but so we i they he she"
)
# Ordinary words said right before "at": with one of them as the user part and no other sign of an
# address, "X at acme dot com" is talk about a website or a place ("find us at", "he works at").
_ORDINARY_BEFORE_AT = _NOT_ADDRESS_WORDS | word_set(
    "look looked looking looks find found visit visited see seen go went going online site website web "
    "page homepage portal app store stores shop office offices work works worked working job based live "
    "lives lived living stay stayed staying meet met meeting here there everyone everybody someone "
    "somebody anyone nobody people folks team guys up down out off back home now then also only just "
    "even still all both more less best least good great aim aimed arrive arrived start started starts "
    "end ended ends hosted listed posted published available priced launched selling sold signup signed "
    "register registered login log sign click check checked stop stopped are were am been being us"
)
_SPOKEN_LOCAL = r"[a-z0-9](?:[a-z0-9._+-]{0,40}[a-z0-9])?"
# A word of a domain label: never one of the words that join or end labels.
_DOMAIN_WORD = r"(?!(?:dot|at|dash|hyphen|and|or)\b)[a-z0-9][a-z0-9-]{0,40}"
# A label said as up to three words ("acme corp"), or joined by "dash" ("acme dash corp").
_DOMAIN_LABEL = rf"{_DOMAIN_WORD}(?:(?:\s{{1,3}}(?:dash|hyphen))?\s{{1,3}}{_DOMAIN_WORD}){{0,2}}"
_DOT = r"(?:\s{1,3}dot\s{1,3}|\.)"
# The last label (the top-level domain) is one word. Every repetition is bounded, so each attempt to
# match costs constant work: linear in all.
_SPOKEN_EMAIL = re.compile(
    rf"(?<![\w'’.+-])(?P<local>(?:(?![ai]\b)[a-z]\s{{1,3}}){{0,2}}{_SPOKEN_LOCAL}"
    rf"(?:\s{{1,3}}(?:dot|underscore|dash|hyphen)\s{{1,3}}{_SPOKEN_LOCAL}){{0,4}})"
    r"(?:\s{1,3}at\s{1,3}|\s{0,3}@\s{0,3})"
    rf"(?P<domain>{_DOMAIN_LABEL}(?:{_DOT}{_DOMAIN_LABEL}){{0,3}}{_DOT}{_DOMAIN_WORD})\b",
    re.IGNORECASE,
)
_DOMAIN_SEP = re.compile(r"\s+dot\s+|\.", re.IGNORECASE)
_LABEL_WORD_SEP = re.compile(r"\s+(?:(?:dash|hyphen)\s+)?", re.IGNORECASE)
_LOCAL_SEP = re.compile(r"\s+(?:dot|underscore|dash|hyphen)\s+", re.IGNORECASE)


def written_emails(text: str) -> Iterator[Find]:
    for m in _WRITTEN_EMAIL.finditer(text):
        yield Find(PiiKind.EMAIL, m.start(), m.end())


def spoken_emails(text: str) -> Iterator[Find]:
    pos = 0
    while (m := _SPOKEN_EMAIL.search(text, pos)) is not None:
        if _plausible_spoken_email(text, m):
            yield Find(PiiKind.EMAIL, m.start(), m.end())
            pos = m.end()
        else:
            # "email me at jo dot smith at acme dot com": the address may start inside a rejected match.
            # A match is a bounded stretch, so trying again from its next character stays linear.
            pos = m.start() + 1


def _plausible_spoken_email(text: str, m: re.Match[str]) -> bool:
    """An address needs a real TLD and some sign it is an e-mail, since "at" and "dot" are common words."""
    labels = [label.lower() for label in _DOMAIN_SEP.split(m["domain"])]
    domain_words = [w.lower() for label in labels for w in _LABEL_WORD_SEP.split(label)]
    local_words = m["local"].lower().split()
    if labels[-1] not in _TLDS or any(w in _NOT_ADDRESS_WORDS for w in domain_words):
        return False
    if local_words[0] in _NOT_ADDRESS_WORDS or local_words[-1] in _NOT_ADDRESS_WORDS:
        return False
    if "@" in m.group(0) or labels[0] in _MAIL_PROVIDERS:
        return True
    dotted_local = (
        len(_LOCAL_SEP.split(m["local"])) > 1
        or any(c in m["local"] for c in "._")
        or any(c.isdigit() for c in m["local"])
    )
    if dotted_local or any(w in _EMAIL_CUES for w in _words_before_local(text, m.start())):
        return True
    # No cue: "jane at acme corp dot com" (a name) is an address; "our site at acme dot com" is not.
    return len(local_words) > 1 or local_words[0] not in _ORDINARY_BEFORE_AT


def _words_before_local(text: str, start: int) -> list[str]:
    return words_before(text, start, 6)
