-- The partner rate, shared by every process of the fleet (GCRA): `tat` is the time at
-- which the next slot begins; a process leases n slots by moving it n intervals ahead.
-- `paused_until` is set from a 429's Retry-After: no slot begins before it.
CREATE TABLE partner_rate (
    name         text PRIMARY KEY,
    tat          timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until timestamptz NOT NULL DEFAULT '-infinity'
);
