-- 0006: erasure and retention (issue 13, privacy): who erased or purged what, when.
-- Applied by callsense/storage.py at start-up, inside one transaction under an advisory lock.

-- Never holds call content: the call id, the tenant, who did it (a key id, or 'retention' for the nightly
-- purge) and counts. Kept when the call it names is gone: that is its point.
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    tenant          text NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL CHECK (action IN ('erase_call', 'retention_purge')),
    target          text NOT NULL,  -- the call id erased, or the cut-off of a purge
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant, at);
-- The retention purge (a tenant's calls started before a cut-off) uses calls_tenant_started_at_idx (0001).
