-- 0002: durable delivery of webhooks (CRM pushes, Slack alerts) and the record of daily roll-up runs.
-- Applied by gateway/store.py at start-up, inside one transaction under an advisory lock.

-- The outbox: a message is inserted in the same transaction as what caused it (a call's end, a roll-up),
-- then delivered by gateway/enrichment/webhooks.py, retried with back-off until the receiver takes it.
-- Rows are never deleted: delivered_at / dead_at record how each one ended.
-- No signing secret is stored here: messages are signed at send time with the tenant's current secret.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('crm', 'slack')),
    tenant          text NOT NULL DEFAULT '',
    call_id         text,  -- the call a CRM push is about (no foreign key: the record outlives the call)
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    -- 'crm:<call_id>', 'slack:<day>:<tenant>:<team>': one message per call / per day and team, however
    -- many replicas or re-runs try to enqueue it. Also sent as the Idempotency-Key header.
    dedupe_key      text NOT NULL UNIQUE,
    attempts        integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; a dispatcher that claims a row pushes it forward (a lease), so a
    -- dispatcher that dies mid-send leaves the row to be retried when the lease runs out.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,  -- HTTP status of the last attempt (NULL: no response)
    last_error      text,
    delivered_at    timestamptz,
    dead_at         timestamptz,  -- given up: the receiver refused the message itself (a 4xx)
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- What dispatchers scan: the pending rows by due time.
CREATE INDEX webhook_outbox_pending_idx ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- The denominator of daily_rollups.negative_rate (customer-side scored utterances), so that an alert can
-- ask for a minimum sample and a reader can weigh the rate.
ALTER TABLE daily_rollups ADD COLUMN customer_utterances integer NOT NULL DEFAULT 0;

-- One row per day whose roll-up has run (and enqueued its alerts): the nightly scheduler's catch-up
-- at start-up skips the days found here.
CREATE TABLE rollup_runs (
    day             date PRIMARY KEY,
    rows            integer NOT NULL,
    ran_at          timestamptz NOT NULL DEFAULT now()
);
