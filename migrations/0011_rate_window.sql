-- The last slots the fleet leased (seconds since the epoch, oldest first, a rate's
-- worth at most): the ledger counts them as the partner counts calls, in any sliding
-- second, so that a slot nobody took can be made up later in the same second
-- (shared/partner/src/schedule.rs). `tat` stays the even schedule's next slot.
ALTER TABLE partner_rate ADD COLUMN recent float8[] NOT NULL DEFAULT '{}';
-- A row created from now on has no even schedule to make up for before its first lease.
ALTER TABLE partner_rate ALTER COLUMN tat SET DEFAULT '-infinity';
