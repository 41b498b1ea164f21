"""Identity and tenancy: who is calling, and what of which tenant they may reach.

- ``credentials``: the key and session token formats, roles, the ``Principal`` a credential stands for;
- ``key_store``: keys and browser sessions in PostgreSQL (only hashes of their secrets);
- ``authenticator``: a credential (``Authorization: Bearer``, the session cookie, gRPC metadata) to a
  Principal, cached so that a database outage does not sign everyone out;
- ``edge``: the claims of an identity provider's JWT that Envoy validated, believed only next to the secret
  Envoy and the gateway share, to a Principal;
- ``access``: the rules: which calls, watches and reports a Principal reaches, and the tenant (and agent,
  team) a call it starts belongs to: always the credential's, never the request body's;
- ``web``: the HTTP side: the FastAPI dependency, ``/v1/session`` (sign-in for the pages) and the
  WebSocket handshake check (credential and Origin).
- ``twilio_signature``: Twilio Media Streams, which cannot carry a key: the upgrade's X-Twilio-Signature,
  checked with the Twilio auth token of the tenant the path names.
"""
