"""Card details said around a card number: the security code, and a number split across two texts.

- Security code: the 3 or 4 digits after "security code", "CVV", "CVC", "CV2" ("c v v" as ASR spells
  it) or "the three digits on the back", written or spoken ("the CVV is four five six").
- A split card number: "my card number is 4111 1111" and, in the speaker's next text, "1111 1111". The
  first text is sent on before the second is heard, so a text that *ends* in digits that may begin a card
  has them masked as ``[CARD]`` at once, and leaves a ``CardCarry`` for the same speaker's next text,
  whose leading digits are then masked too. Digits "may begin a card" when a card cue comes just before
  them ("card", "visa", "mastercard", "amex") and they start as a card does (2-6), or, with no cue, when
  they are in 4-digit groups, none of them round, that start like a real card (a Visa, Mastercard, Amex,
  Discover, ... prefix). "My card ends in 4242" and "the card limit is 5000" are not starts of a number.

Everything here looks at a bounded stretch after a cue, or at the start or end of the text: constant work
per cue, so linear in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from chopper_service.pii.masks import CardCarry, Find, PiiKind
from chopper_service.pii.numbers import MAX_PII_DIGITS, luhn_valid
from chopper_service.pii.spoken import DigitRun, digit_run_at, last_digit_run
from chopper_service.pii.words import skip_fillers, word_set, words_before

# ----------------------------------------------------------------------------------------- security code

_SECURITY_CODE_CUE = re.compile(
    r"\b(?:security\s{1,3}code|cv[vc]2?|cv2|c\.?\s{1,2}v\.?\s{1,2}(?:v|c|2|two)\b\.?"
    r"|(?:three|3|four|4)\s{1,3}digits?\s{1,3}on\s{1,3}the\s{1,3}back)\b",
    re.IGNORECASE,
)
# Words between the cue and the code ("the CVV on the back of the card is ..."). Not "oh": it is a zero.
_CODE_FILLERS = word_set(
    "is was it's its it that's thats the my your code number digits digit on back of card cards would be "
    "are will just um uh er erm yeah yes okay ok so then sure which reads says"
)


def security_codes(text: str) -> Iterator[Find]:
    for cue in _SECURITY_CODE_CUE.finditer(text):
        run = digit_run_at(text, skip_fillers(text, cue.end(), _CODE_FILLERS), max_tokens=8)
        if run is not None and 3 <= len(run.digits) <= 4 and not _price_like(text, run):
            yield Find(PiiKind.CARD_SECURITY_CODE, run.start, run.end)


# ------------------------------------------------------------------------------------ split card number

# ("credit" and "debit" alone are no cue: "a credit of 5000"; "credit card" has "card".)
_CARD_CUES = word_set("card visa mastercard amex maestro")
# Words near the digits that say they are not the start of a card number.
_NOT_A_CARD_START = word_set(
    "ends end ending ended last final expires expiry expiration exp security cvv cvc code pin zip postcode "
    "postal phone call cell mobile extension limit balance cost costs fee fees price charge charged pay "
    "paid paying spend spent points miles since year years until till order reference ref account worth "
    "value valued budget between from range around about approximately roughly maybe"
)
_FILLERS_AT_EDGES = word_set("um uh er erm and then so okay ok yes yeah sorry right")
_CONTINUATION_FILLERS = _FILLERS_AT_EDGES | word_set("it's its the rest is it next continuing after that")
_TRAILING_PUNCTUATION = " \t\r\n.,;:!?…-–—\"'”’)"
_ENDS_ON_CARD_CUE = re.compile(
    r"\b(?:card|visa|mastercard|amex)(?:\s{1,3}number(?:'s|\s{1,3}(?:is|it's|was))?|\s{1,3}(?:is|it's|reads))\Z",
    re.IGNORECASE,
)
_FOUR_DIGIT_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4}){1,2}")
_PRICE_LIKE = re.compile(r"\d[,.]\d")
# A card ends within 19 digits, and the common lengths (15, 16) within 16: a number carried past that is
# done, whether its checksum passed or not.
_CARRY_UNTIL_DIGITS = 16


def card_start_plausible(digits: str, *, strict: bool) -> bool:
    """Whether ``digits`` may begin a card number: strict, by issuer prefix; else by first digit (2-6)."""
    if not strict:
        return digits[:1] in ("2", "3", "4", "5", "6")
    head = int(digits[:4].ljust(4, "0"))
    return (
        digits[0] in "456"  # Visa; Mastercard 51-55 and Maestro 50, 56-59; Discover, UnionPay, Maestro
        or 2221 <= head <= 2720  # Mastercard 2-series
        or digits[:2] in ("30", "34", "35", "36", "37", "38", "39")  # Diners, JCB, Amex
    )


def card_finds(text: str, carry: CardCarry | None) -> tuple[list[Find], Find | None, CardCarry | None]:
    """The masks for a card number split across texts: the leading digits that continue ``carry``, the
    trailing digits that may begin a card, and the carry for the next text (if those are masked)."""
    finds: list[Find] = []
    continued = _continuation(text, carry) if carry is not None else None
    if continued is not None:
        finds.append(Find(PiiKind.CARD, continued[0].start, continued[0].end))
    end = _content_end(text)
    if continued is not None and continued[0].end == end:
        digits = continued[1]
        if len(digits) < _CARRY_UNTIL_DIGITS and not _complete(digits):
            return finds, finds[-1], CardCarry(digits)
        return finds, None, None
    run = last_digit_run(text, end)
    if run is not None and _begins_a_card(text, run):
        tail = Find(PiiKind.CARD, run.start, run.end)
        return [*finds, tail], tail, CardCarry(run.digits)
    if run is None and _ENDS_ON_CARD_CUE.search(text, max(end - 40, 0), end):
        return finds, None, CardCarry("")  # "... my card number is" and the digits come next
    return finds, None, None


def _complete(digits: str) -> bool:
    """A whole card number: 13-19 digits that pass the Luhn check."""
    return 13 <= len(digits) <= MAX_PII_DIGITS and luhn_valid(digits)


def _content_end(text: str) -> int:
    """Where the text ends once trailing punctuation and a few filler words ("um", "and") are dropped."""
    end = len(text)
    for _ in range(4):
        while end > 0 and text[end - 1] in _TRAILING_PUNCTUATION:
            end -= 1
        last = words_before(text, end, 1)
        if not last or last[0] not in _FILLERS_AT_EDGES:
            break
        if text[end - len(last[0]) : end].lower() != last[0]:
            break  # the filler is not the text's last word
        end -= len(last[0])
    return end


def _price_like(text: str, run: DigitRun) -> bool:
    """Written thousands or decimals ("5,000", "4.99"): a card's groups are split by blanks or dashes."""
    return not run.spoken and _PRICE_LIKE.search(text, run.start, run.end) is not None


def _begins_a_card(text: str, run: DigitRun) -> bool:
    digits = run.digits
    if not 4 <= len(digits) < _CARRY_UNTIL_DIGITS or _complete(digits) or _price_like(text, run):
        return False
    before = words_before(text, run.start, 6)
    if any(w in _NOT_A_CARD_START for w in before):
        return False
    if any(w in _CARD_CUES for w in before):
        return card_start_plausible(digits, strict=False)
    grouped = not run.spoken and _FOUR_DIGIT_GROUPS.fullmatch(text, run.start, run.end) is not None
    # Without a cue, round groups are a range or a list of amounts ("a budget of 4000-5000").
    round_group = any(digits[i + 2 : i + 4] == "00" for i in range(0, len(digits), 4))
    return grouped and not round_group and card_start_plausible(digits, strict=True)


def _continuation(text: str, carry: CardCarry) -> tuple[DigitRun, str] | None:
    """The digits at the start of ``text`` that go on with the carried card, and the card's digits so far."""
    run = digit_run_at(text, skip_fillers(text, 0, _CONTINUATION_FILLERS, max_words=4))
    if run is None or _price_like(text, run) or len(run.digits) > MAX_PII_DIGITS:
        return None
    digits = carry.digits + run.digits
    if not carry.digits:  # nothing said yet: these must look like a card's start
        if len(run.digits) < 4 or not card_start_plausible(run.digits, strict=True):
            return None
    elif len(run.digits) < 3 and not _complete(digits):
        return None  # "2 more questions" after the first half is no part of it
    return run, digits
