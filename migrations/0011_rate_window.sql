-- The fleet's partner-rate schedule keeps, beside `tat`, what it needs to count calls
-- as the partner does, in any sliding second (shared/partner/src/schedule.rs):
-- `recent`, the last slots leased (seconds since the epoch, oldest first, a rate's
-- worth at most), and `next_even`, the even schedule's next slot, which falls behind
-- the clock while a short gap is made up. `tat` keeps its meaning (the next slot
-- begins after the last one leased), so that a version of the fleet that reads only
-- `tat` can lease from the same row during a rolling update; this version counts what
-- that one leased from how far it moved `tat`.
ALTER TABLE partner_rate ADD COLUMN recent float8[] NOT NULL DEFAULT '{}';
ALTER TABLE partner_rate ADD COLUMN next_even float8 NOT NULL DEFAULT '-infinity';
-- A row created from now on has had no slot leased from it.
ALTER TABLE partner_rate ALTER COLUMN tat SET DEFAULT '-infinity';
