-- The even schedule's next slot, apart from `tat` (shared/partner/src/schedule.rs): it
-- falls behind the clock while a short gap is made up, whereas `tat` keeps its first
-- meaning (the next slot begins there or later), so that a version of the fleet that
-- reads only `tat` can lease from the same row during a rolling update. This version
-- writes `tat` where even slots may follow its own without one call too many in a
-- second, and counts what the other version leased from how far it moved `tat`.
ALTER TABLE partner_rate ADD COLUMN next_even float8 NOT NULL DEFAULT '-infinity';
