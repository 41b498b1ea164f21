-- 0005: API keys and the browser sessions made from them (identity and tenancy, gateway/auth/).
-- Applied by callsense/storage.py at start-up, inside one transaction under an advisory lock.

-- A key is "csk_<key_id>_<secret>". Only the SHA-256 of the secret is kept: the secret is 32 random
-- bytes, so a fast hash is enough (nothing to brute-force), and a stolen table opens no door.
CREATE TABLE api_keys (
    key_id          text PRIMARY KEY,
    secret_sha256   bytea NOT NULL,
    tenant          text NOT NULL,
    -- agent: the calls of one agent; manager: of one team; admin: the whole tenant (and its keys);
    -- service: the whole tenant over any API, for backend teams (no key management).
    role            text NOT NULL CHECK (role IN ('agent', 'manager', 'admin', 'service')),
    agent           text NOT NULL DEFAULT '',  -- an agent key's agent (calls.agent)
    team            text NOT NULL DEFAULT '',  -- an agent's or manager's team (calls.team)
    name            text NOT NULL DEFAULT '',  -- what it is for, for people listing keys
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK (role <> 'agent' OR agent <> ''),
    CHECK (role <> 'manager' OR team <> '')
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant);

-- A signed-in browser: an HttpOnly cookie holds the token; only its hash is stored. Ends at expires_at
-- or with its key.
CREATE TABLE web_sessions (
    token_sha256    bytea PRIMARY KEY,
    key_id          text NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX web_sessions_expires_idx ON web_sessions (expires_at);
