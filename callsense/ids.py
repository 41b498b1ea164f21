"""What a call id may look like, checked the same way by every process that accepts one."""

from __future__ import annotations

import re

CALL_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""1-128 characters of letters, digits and ``. _ : -``: safe in URLs, headers, logs and file names."""


def is_valid_call_id(value: str) -> bool:
    return CALL_ID_PATTERN.fullmatch(value) is not None
