-- Dead letters: what could not be applied, kept where operators can read, requeue and
-- archive it. Nothing is ever deleted silently: archived letters stay restorable until
-- `restore_until`, and only an explicit, audited `purge --expired` removes them.

CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    -- What identifies the message across redeliveries: its event id, else the AMQP
    -- message id, else a digest of routing key and body.
    message_key     text NOT NULL,
    event_id        text,
    contract_id     text,
    type            text NOT NULL,
    routing_key     text NOT NULL,
    message_id      text,
    body            bytea NOT NULL,
    -- invalid (bad input), refused (Skeelo said no), exhausted (retries used up),
    -- broker (dead-lettered by RabbitMQ itself, e.g. delivery limit)
    reason          text NOT NULL,
    -- finer: not_json, invalid_document, unknown_product, http_422_…, transient, …
    error_class     text NOT NULL,
    last_error      text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    -- parked (waiting for an operator), requeued, archived
    state           text NOT NULL DEFAULT 'parked',
    requeued_at     timestamptz,
    requeued_by     text,
    archived_at     timestamptz,
    archived_by     text,
    restore_until   timestamptz,
    CHECK (state IN ('parked', 'requeued', 'archived'))
);
-- One parked letter per message: a redelivered failure updates it instead of adding one.
CREATE UNIQUE INDEX dead_letters_one_parked ON dead_letters (message_key) WHERE state = 'parked';
CREATE INDEX dead_letters_by_state ON dead_letters (state, last_failed_at DESC);
CREATE INDEX dead_letters_by_contract ON dead_letters (contract_id);

-- Every operator action: who, when, what, on how many.
CREATE TABLE operator_actions (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    operator text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL,
    count    integer NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Contracts whose Skeelo state is in doubt: marked (in its own transaction) before the
-- first Skeelo call of an event and cleared by the commit that records the answers. A
-- mark that survives means calls were made whose answers were never recorded (a crash,
-- a failed commit, a failure mid-plan): the next event of that contract asks Skeelo
-- what it holds before planning. `owner` is the attempt that made the calls; another
-- attempt waits until those calls cannot still be in flight (`since` + the call budget)
-- before it reads Skeelo back, so a late answer cannot land after the read.
CREATE TABLE skeelo_uncertain (
    contract_id text PRIMARY KEY,
    owner       uuid NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
