-- 0001: calls, their scored utterances, and daily roll-ups.
-- Applied by gateway/store.py at start-up, inside one transaction under an advisory lock.
-- Text columns used for grouping are NOT NULL DEFAULT '' so that roll-up keys never hold NULL.

CREATE TABLE calls (
    call_id                 text PRIMARY KEY,
    tenant                  text NOT NULL DEFAULT '',
    region                  text NOT NULL DEFAULT '',
    agent                   text NOT NULL DEFAULT '',
    team                    text NOT NULL DEFAULT '',
    language                text NOT NULL DEFAULT '',
    -- 'failed' mirrors CallStatus.FAILED in sentiment.proto (a call that ended abnormally).
    status                  text NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'ended', 'failed')),
    started_at              timestamptz NOT NULL DEFAULT now(),
    ended_at                timestamptz,
    duration_s              double precision,
    avg_sentiment           double precision,
    min_sentiment           double precision,
    customer_avg_sentiment  double precision,
    agent_avg_sentiment     double precision,
    utterance_count         integer NOT NULL DEFAULT 0,
    objection_tags          jsonb NOT NULL DEFAULT '[]'::jsonb,
    summary                 jsonb,
    metadata                jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Daily reports and roll-ups scan a day's range of started_at, overall or for one agent / tenant.
CREATE INDEX calls_started_at_idx ON calls (started_at);
CREATE INDEX calls_agent_started_at_idx ON calls (agent, started_at);
CREATE INDEX calls_tenant_started_at_idx ON calls (tenant, started_at);

CREATE TABLE nlp_events (
    id              bigserial PRIMARY KEY,
    call_id         text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    utterance_id    integer NOT NULL CHECK (utterance_id >= 0),
    channel         text NOT NULL CHECK (channel IN ('customer', 'agent', 'mixed')),
    start_ms        integer NOT NULL,
    end_ms          integer NOT NULL,
    text            text NOT NULL,  -- already PII-masked by the chopper
    label           text NOT NULL CHECK (label IN ('negative', 'neutral', 'positive')),
    p_negative      double precision NOT NULL,
    p_neutral       double precision NOT NULL,
    p_positive      double precision NOT NULL,
    score           double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    model_version   text NOT NULL,
    inference_ms    double precision,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Idempotency key (replays insert nothing); its index also serves "a call's events in order".
    UNIQUE (call_id, utterance_id)
);

CREATE TABLE daily_rollups (
    day             date NOT NULL,
    tenant          text NOT NULL DEFAULT '',
    team            text NOT NULL DEFAULT '',
    agent           text NOT NULL DEFAULT '',
    calls           integer NOT NULL DEFAULT 0,
    utterances      integer NOT NULL DEFAULT 0,
    avg_sentiment   double precision,
    negative_rate   double precision,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, tenant, team, agent)
);

-- Trends of one agent or team over days (the PK leads with day, so it cannot serve these).
CREATE INDEX daily_rollups_tenant_agent_day_idx ON daily_rollups (tenant, agent, day);
CREATE INDEX daily_rollups_tenant_team_day_idx ON daily_rollups (tenant, team, day);
