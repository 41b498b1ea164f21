"""The PII table (issue 13): every kind the chopper masks, written, spoken and split across two texts,
each checked for the sensitive part gone and the right mask in its place; and ordinary sales talk that
must stay as it is."""

from __future__ import annotations

import pytest

from chopper_service.pii import MaskedText, PiiKind, iban_valid, mask_pii

CARD = PiiKind.CARD
CVV = PiiKind.CARD_SECURITY_CODE
DOB = PiiKind.DATE_OF_BIRTH
EMAIL = PiiKind.EMAIL
IBAN = PiiKind.IBAN
NATIONAL_ID = PiiKind.NATIONAL_ID
PHONE = PiiKind.PHONE
ADDRESS = PiiKind.ADDRESS


def assert_masked(masked: MaskedText, secrets: tuple[str, ...], kind: PiiKind) -> None:
    for secret in secrets:
        assert secret not in masked.text, f"{secret!r} left in {masked.text!r}"
    assert kind.mask in masked.text, masked.text
    assert kind in [s.kind for s in masked.spans]
    for span in masked.spans:
        assert masked.text[span.start : span.end] == span.kind.mask


# (text, the parts that must not be left in the masked text, the mask expected)
TABLE: list[tuple[str, tuple[str, ...], PiiKind]] = [
    # card security code: written and spoken, after each cue
    ("The security code is 123.", ("123",), CVV),
    ("the card security code is 0 4 2", ("0 4 2",), CVV),
    ("the CVV is four five six", ("four five six",), CVV),
    ("c v v 7 8 9", ("7 8 9",), CVV),
    ("CVV: 987, expiry next year", ("987",), CVV),
    ("my CVC is 1234 thanks", ("1234",), CVV),
    ("the CV2 number is three two one", ("three two one",), CVV),
    ("the three digits on the back are 5 5 2", ("5 5 2",), CVV),
    ("the three digits on the back of the card are seven eight nine", ("seven eight nine",), CVV),
    ("security code, um, oh four two", ("oh four two",), CVV),
    # e-mail: written, spoken, a domain label said as several words, an initial, "dash"
    ("my email is john.smith@example.com", ("john.smith", "example.com"), EMAIL),
    ("it's john dot smith at example dot com", ("smith", "example"), EMAIL),
    ("jane at acme corp dot com", ("jane", "acme corp"), EMAIL),
    ("sure, my email is jane at acme corp dot com, thanks", ("jane", "acme corp"), EMAIL),
    ("j smith at acme dash corp dot co dot uk", ("smith", "acme dash corp"), EMAIL),
    ("you can mail j smith at acme dash corp dot co dot uk today", ("smith", "acme"), EMAIL),
    # UK National Insurance number
    ("my NI number is QQ 12 34 56 C", ("QQ 12 34 56 C", "12 34 56"), NATIONAL_ID),
    ("qq123456c", ("qq123456c", "123456"), NATIONAL_ID),
    ("QQ123456C", ("123456",), NATIONAL_ID),
    ("it's AB 12 34 56 C", ("12 34 56",), NATIONAL_ID),
    ("national insurance qq 12 34 56 c", ("12 34 56",), NATIONAL_ID),
    ("it's Q Q one two three four five six C", ("one two three four five six",), NATIONAL_ID),
    ("my national insurance number is q q one two three four five six c", ("four five six",), NATIONAL_ID),
    # IBAN (mod-97 checked): printed groups, one piece, lower case
    ("my IBAN is GB82 WEST 1234 5698 7654 32", ("GB82", "1234 5698 7654 32"), IBAN),
    ("DE89370400440532013000", ("DE89370400440532013000", "370400440532013000"), IBAN),
    ("the account is gb82 west 1234 5698 7654 32 okay", ("gb82", "5698 7654"), IBAN),
    ("de89 3704 0044 0532 0130 00 is the iban", ("3704 0044",), IBAN),
    ("FR14 2004 1010 0505 0001 3M02 606", ("2004 1010",), IBAN),
    ("pay NL91ABNA0417164300 please", ("NL91ABNA0417164300",), IBAN),
    # date of birth, after a cue
    ("my date of birth is 14/03/1985", ("14/03/1985", "1985"), DOB),
    ("DOB 1985-03-14", ("1985-03-14",), DOB),
    ("D.O.B.: 14.03.85", ("14.03.85",), DOB),
    ("I was born on March 14th, 1985", ("March 14th", "1985"), DOB),
    ("my birthday is the fourteenth of March nineteen eighty five", ("fourteenth", "eighty five"), DOB),
    ("date of birth fourteen March nineteen eighty-five", ("fourteen March", "eighty-five"), DOB),
    ("born 3 Jan 2001", ("3 Jan 2001",), DOB),
    ("my birthday is March 14th", ("March 14th",), DOB),
    ("birth date is the first of May two thousand and one", ("first of May", "thousand"), DOB),
    # street address
    ("I live at 221B Baker Street.", ("221B", "Baker"), ADDRESS),
    ("1600 Pennsylvania Avenue NW, Washington, DC 20500", ("1600", "Pennsylvania", "20500"), ADDRESS),
    ("send it to 42 elm st please", ("42 elm",), ADDRESS),
    ("it's 12 Station Road, Leeds", ("12 Station", "Leeds"), ADDRESS),
    ("one two three Main Street", ("one two three Main",), ADDRESS),
    ("the office is at 350 5th Avenue, New York, NY 10118", ("350 5th", "New York", "10118"), ADDRESS),
    ("ship it to 7 abbey way", ("7 abbey",), ADDRESS),
    # masked already: cards, phones, social security and SIN numbers, written and spoken
    ("card 4111 1111 1111 1111 thanks", ("4111",), CARD),
    ("card four one one one one one one one one one one one one one one one", ("one one one",), CARD),
    ("call me on (415) 555-1234", ("555-1234",), PHONE),
    ("my number is four one five five five five one two three four", ("one two three four",), PHONE),
    ("my social is 123-45-6789", ("6789",), NATIONAL_ID),
]


@pytest.mark.parametrize(("text", "secrets", "kind"), TABLE)
def test_pii_is_masked(text: str, secrets: tuple[str, ...], kind: PiiKind) -> None:
    assert_masked(mask_pii(text), secrets, kind)


def test_the_cue_stays_and_only_the_value_is_masked() -> None:
    assert mask_pii("the CVV is four five six").text == "the CVV is [CARD_SECURITY_CODE]"
    assert mask_pii("my date of birth is 14/03/1985, ok").text == "my date of birth is [DATE_OF_BIRTH], ok"
    assert mask_pii("I live at 221B Baker Street.").text == "I live at [ADDRESS]."
    assert mask_pii("my IBAN is GB82 WEST 1234 5698 7654 32").text == "my IBAN is [IBAN]"


# (the first text, the speaker's next one, the parts that must be in neither)
SPLIT_CARDS: list[tuple[str, str, tuple[str, ...]]] = [
    ("my card number is 4111 1111", "1111 1111", ("4111", "1111")),
    ("My card number is 4111 1111.", "And 1111 1111, okay?", ("4111", "1111")),
    ("it's a visa, 4111-1111", "1111-1111", ("4111", "1111")),
    ("4111 1111", "1111 1111", ("4111", "1111")),  # no cue: 4-digit groups with a card's prefix
    ("my card number is four one one one one one one one", "one one one one one one one one", ("one one",)),
    (
        "the card number is four one one one, one one one one",
        "uh, one one one one, one one one one",
        ("one",),
    ),
    ("my card number is", "4111 1111 1111 1111", ("4111", "1111")),
    ("my card number is", "4111 1111", ("4111", "1111")),
    ("amex 3782 822463", "10005", ("3782", "822463", "10005")),
]


@pytest.mark.parametrize(("first", "second", "secrets"), SPLIT_CARDS)
def test_card_number_split_across_two_texts(first: str, second: str, secrets: tuple[str, ...]) -> None:
    head = mask_pii(first)
    tail = mask_pii(second, carry=head.carry)
    if any(ch.isdigit() for ch in first) or "one" in first:
        assert_masked(head, secrets, CARD)
    assert head.carry is not None
    assert_masked(tail, secrets, CARD)


def test_card_number_in_three_parts_and_where_it_stops() -> None:
    first = mask_pii("my card number is 4111")
    second = mask_pii("1111", carry=first.carry)
    third = mask_pii("1111 1111. What else do you need?", carry=second.carry)
    assert [first.text, second.text, third.text] == [
        "my card number is [CARD]",
        "[CARD]",
        "[CARD]. What else do you need?",
    ]
    assert third.carry is None  # 16 Luhn-valid digits: the number is complete
    assert mask_pii("20 minutes left", carry=third.carry).text == "20 minutes left"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("my card number is 4111 1111", "2 more questions"),  # too short to go on with it
        ("My card ends in 4242.", "1111 1111"),  # the last digits, not the start
        ("the card limit is 5000", "1000 more next month"),
        ("we grew from 2019 2020", "2021 was flat"),  # years are no card prefix
        ("call me on 4155 5512", "3434 please"),
        ("my card number is 4111 1111", "Sorry, what was that?"),
        ("My card number is", "2024 was a good year."),  # no card starts like a year
        # "card" alone at the end of a text announces no number
        ("We ship it with a model card", "4111 is our ticket number."),
    ],
)
def test_what_does_not_start_or_continue_a_card(first: str, second: str) -> None:
    head = mask_pii(first)
    tail = mask_pii(second, carry=head.carry)
    assert tail.text == second
    if "4111" not in first:
        assert head.text == first


# ----------------------------------------------------------------------------- ordinary talk stays


@pytest.mark.parametrize(
    "text",
    [
        # prices, quantities, years, times, quarters
        "It costs $5,000 a year, or twenty thousand dollars over four years.",
        "We need 40 seats, maybe 45 by the summer.",
        "There are 5 users on the team and 12 on the waiting list.",
        "We signed in 2024 and renewed in 2025.",
        "The 2026 budget is not approved yet.",
        "Q3 was slow, Q4 should be better.",
        "Let's talk at 10:30 or at three thirty tomorrow.",
        "We sold 100 units in 2 days, 4.99 each, 15% off.",
        "Room 101 is on the 2nd floor.",
        # dates without a birth cue
        "We go live on March 14th.",
        "The contract ends 31/12/2026.",
        "The renewal is due 2026-12-31, the fourteenth of March at the latest.",
        "I was born in 1985 and joined in 2010.",
        "My birthday party is on Friday.",
        # "at" and "dot" in ordinary talk
        "Let's meet at noon.",
        "I'm at acme now.",
        "We met at the office dot com launch.",
        "Go to our site at acme dot com for the details.",
        "He works at acme dot com these days.",
        "Look at the numbers dot by dot.",
        # streets as words, numbers before nouns
        "We have 3 main street-facing shops.",
        "The 5 high street stores are closing.",
        "There's 1 simple way to do it.",
        "We have 2 locations on Main Street.",
        "We have 2 main roads into town.",
        # codes and cue words without their value
        "Our security code of conduct is strict.",
        "Reference GB82 WEST 1234 5698 7654 33 please.",  # fails mod-97
        "Order DE89370400440532013001 shipped.",
        "We priced it at 12 34 56 a piece.",
        "My card ends in 4242.",
        "The card limit is 5000.",
        "The CVV field was empty.",
        # digits at the end of a text that do not begin a card
        "We'd want a budget of 4000-5000",
        "We can offer you a credit of 5000",
        "Somewhere between 4512 5111",
        "The gift card is worth 5000",
        "Growth was flat from 2019 2020",
    ],
)
def test_ordinary_sales_talk_is_left_alone(text: str) -> None:
    masked = mask_pii(text)
    assert masked.text == text
    assert masked.spans == ()
    assert masked.carry is None


def test_iban_check() -> None:
    assert iban_valid("GB82WEST12345698765432")
    assert iban_valid("de89370400440532013000")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234569876543")  # one short for GB
    assert not iban_valid("ZZ82WEST12345698765432")
