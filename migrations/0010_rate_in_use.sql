-- How many partner-rate slots the fleet has leased, ever: a reader samples it twice
-- and knows the rate the fleet takes (the console's overview does), without a row per
-- call on the leasing path.
ALTER TABLE partner_rate ADD COLUMN leased bigint NOT NULL DEFAULT 0;
