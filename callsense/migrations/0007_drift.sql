-- 0007: drift indicators per tenant and day (issue 16, lifecycle): what the model was asked to score.
-- Applied by callsense/storage.py at start-up, inside one transaction under an advisory lock.

-- Written by the post-call worker with each day's roll-up (postcall/drift_job.py, postcall/drift_store.py);
-- read by the next days' checks (the trailing 28 days) and by GET /v1/reports/drift. Figures only, no text:
-- like daily_rollups, the rows stay when the retention purge removes the calls.
CREATE TABLE drift_daily (
    tenant              text NOT NULL DEFAULT '',
    day                 date NOT NULL,
    utterances          integer NOT NULL,       -- scored utterances: the label mix's denominator
    text_utterances     integer NOT NULL,       -- of those, the ones whose words were read
    token_length        double precision,       -- mean tokens of the served model's tokenizer per utterance
    stop_word_ratio     double precision,
    oov_rate            double precision,       -- against the training text's vocabulary (the baseline)
    negative_share      double precision,
    neutral_share       double precision,
    positive_share      double precision,
    mean_confidence     double precision,
    -- The day's checks against its trailing days and the baseline, as computed (postcall/drift_rule.py).
    checks              jsonb NOT NULL DEFAULT '[]'::jsonb,
    drifting            boolean NOT NULL DEFAULT false,
    -- The Slack message's dedupe key in webhook_outbox when the day drifted and the tenant has a webhook.
    alert_key           text,
    baseline_model      text NOT NULL DEFAULT '',  -- the model version the baseline was made for
    computed_at         timestamptz NOT NULL DEFAULT now(),
    -- Leads with the tenant: the trailing days of one tenant are one range of this index.
    PRIMARY KEY (tenant, day)
);
