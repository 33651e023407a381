-- Until when the calls behind an uncertainty mark may still land at Skeelo. The owner
-- sets it to now + the call fence when it begins calling, and to now the moment its
-- calls have all returned (the answers are still unrecorded, so the mark stays: the
-- next event reads Skeelo back). An event that finds the mark waits only while
-- `calls_until` is ahead: for the owner's calls to end, never for a worst-case guess.
-- The default covers a row written by an older process, whose fence was a minute.
ALTER TABLE skeelo_uncertain ADD COLUMN calls_until timestamptz;
UPDATE skeelo_uncertain SET calls_until = since + interval '1 minute';
ALTER TABLE skeelo_uncertain
    ALTER COLUMN calls_until SET NOT NULL,
    ALTER COLUMN calls_until SET DEFAULT now() + interval '1 minute';
