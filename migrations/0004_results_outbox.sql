-- Results waiting for the broker (the transactional outbox). A result is written in the
-- same transaction that records its event's outcome, and the delivery is acked once
-- that commits; a relay in every worker process publishes the rows with confirms and
-- deletes each one the broker has taken. A broker that refuses or returns a result
-- (its queue deleted, full, or a policy that rejects publishes) only delays it: the
-- row waits here, the event is never redelivered, repeated or dead-lettered for it.
--
-- `lease_until` lets several processes relay at once without sending a row twice: a
-- relay leases rows for a short while, and a row whose lease ran out (its relay
-- died) is taken by the next one.
CREATE TABLE results_outbox (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL,
    routing_key text NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz
);
