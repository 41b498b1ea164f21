"""Twilio's side of a Media Stream's upgrade in tests: the X-Twilio-Signature Twilio would send.

Written here from Twilio's documented algorithm, not with the gateway's code, so that the tests check the
gateway against the algorithm rather than against itself: base64(HMAC-SHA1(auth token, the full URL)); a
WebSocket upgrade is a GET, so there are no parameters to append.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def twilio_signature(auth_token: str, url: str) -> str:
    """The signature of a GET of exactly ``url`` with ``auth_token``."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_signed(auth_token: str, ws_url: str) -> dict[str, str]:
    """The headers of Twilio's upgrade to ``ws_url`` (``ws://`` or ``wss://``, any host). Twilio opens Media
    Streams over wss only, so the URL it signs is the ``wss://`` one; a test talks plain ws to the same host
    and path, as the gateway sees Twilio's request behind the TLS-terminating edge."""
    return {"X-Twilio-Signature": twilio_signature(auth_token, "wss://" + ws_url.split("://", 1)[1])}
