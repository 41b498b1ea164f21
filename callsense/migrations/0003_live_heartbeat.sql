-- 0003: which live calls are really live, across gateway replicas.
-- Applied by gateway/store.py at start-up, inside one transaction under an advisory lock.

-- The replica that holds a live call refreshes heartbeat_at every few seconds (gateway/heartbeat.py).
-- Any replica can then list the live calls of all of them (GET /v1/calls?status=live), and a call whose
-- replica died (no heartbeat for minutes) is closed as failed instead of staying live forever.
ALTER TABLE calls ADD COLUMN heartbeat_at timestamptz;
-- Calls live at the upgrade count as heard of now. A replica of the previous version sends no heartbeat:
-- its calls stay listed for 5 minutes; one still running after that is closed as failed, and its end,
-- when that replica stores it, sets it ended again.
UPDATE calls SET heartbeat_at = now() WHERE status = 'live';

-- The live calls are few among all calls: a partial index keeps the list and the sweep cheap.
CREATE INDEX calls_live_heartbeat_idx ON calls (heartbeat_at) WHERE status = 'live';
