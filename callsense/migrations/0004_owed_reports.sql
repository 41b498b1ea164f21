-- 0004: calls whose after-call report is still owed.
-- Applied by callsense/storage.py at start-up, inside one transaction under an advisory lock.

-- When the post-call worker is unreachable as a call ends, the gateway stores the call with an empty
-- report marked {"report_pending": true} in its summary; the worker's sweep finds these calls, builds
-- their report, tags and CRM push, and removes the mark. They are few among all calls: a partial index
-- keeps the sweep cheap (its query repeats the index's predicate).
CREATE INDEX calls_report_pending_idx ON calls (ended_at) WHERE summary ? 'report_pending';
