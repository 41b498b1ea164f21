"""Masks personal data in transcript text before it leaves the chopper.

What is found, written or spoken the way an ASR writes it (one module each):

- e-mail addresses (``emails``): ``john.smith@example.com``, ``john dot smith at example dot com``,
  ``jane at acme corp dot com``;
- phone numbers, payment cards and national identifiers written as digits (``numbers``): ``+44 20 7946
  0958``, ``(415) 555-1234``; 13-19 digits in card groups that pass the Luhn check; US SSN, Canadian SIN,
  a bare nine-digit run;
- the same spelled out digit by digit (``spoken``): "four one five five five five one two three four";
- the UK National Insurance number (``uk_nino``): ``QQ 12 34 56 C``, ``qq123456c``, "Q Q one two ... C";
- IBANs that pass the mod-97 check (``iban``): ``GB82 WEST 1234 5698 7654 32``;
- a card's security code after its cue, and a card number split across two texts of one speaker
  (``cards``): "the CVV is four five six"; "my card number is 4111 1111" ... "1111 1111";
- a date of birth after its cue (``dates``): "date of birth 14/03/1985", "born on March 14th, 1985";
- street addresses (``addresses``): "221B Baker Street", "12 Station Road, Leeds".

Each find is replaced by a mask (``PiiKind``'s value: ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ...) and
reported as a span of the masked text. Ordinary numbers and dates stay: prices (``$5,000``, "twenty
thousand dollars"), years, times, quantities, dates without a birth cue.

Every rule does bounded work per character or per cue (bounded windows, bounded repetitions, at most
``MAX_PII_DIGITS`` digits per number), so masking takes time linear in the text's length.
"""

from __future__ import annotations

from chopper_service.pii.addresses import addresses
from chopper_service.pii.cards import card_finds, security_codes
from chopper_service.pii.dates import dates_of_birth
from chopper_service.pii.emails import spoken_emails, written_emails
from chopper_service.pii.iban import iban_valid, ibans
from chopper_service.pii.masks import (
    CardCarry,
    Find,
    MaskedText,
    PiiKind,
    PiiSpan,
    apply_finds,
    resolve_overlaps,
)
from chopper_service.pii.numbers import MAX_PII_DIGITS, luhn_valid, written_numbers
from chopper_service.pii.spoken import spoken_numbers
from chopper_service.pii.uk_nino import uk_national_insurance

__all__ = [
    "MAX_PII_DIGITS",
    "CardCarry",
    "MaskedText",
    "PiiKind",
    "PiiSpan",
    "iban_valid",
    "luhn_valid",
    "mask_pii",
]


def mask_pii(text: str, *, carry: CardCarry | None = None) -> MaskedText:
    """Replace every piece of personal data in ``text`` with its mask.

    ``carry`` is the ``MaskedText.carry`` of the same speaker's previous text of the call (if any): the
    digits at the start of ``text`` that go on with a card number that text ended in are masked too. The
    result's ``carry`` is what to pass with the speaker's next text.
    """
    # Card-split finds come first: on a tie (same span) the first listed wins, and after "my card number
    # is" seven spoken digits are the start of a card, not a phone number.
    split_card, tail, next_carry = card_finds(text, carry)
    finds: list[Find] = [
        *split_card,
        *security_codes(text),
        *ibans(text),
        *dates_of_birth(text),
        *written_emails(text),
        *spoken_emails(text),
        *written_numbers(text),
        *uk_national_insurance(text),
        *spoken_numbers(text),
        *addresses(text),
    ]
    chosen = resolve_overlaps(finds)
    if tail is not None and tail not in chosen:
        next_carry = None  # its digits were part of something longer (a phone number, an address)
    return apply_finds(text, chosen, next_carry)
