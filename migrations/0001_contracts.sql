-- Contracts, their facts, what Skeelo holds, and each contract's story.

-- Skeelo's catalogue, refreshed from GET /v1/products; events naming other SKUs are invalid.
CREATE TABLE catalogue (
    sku          text PRIMARY KEY,
    name         text NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);

-- One row per ERP contract. `facts` is the lifecycle state (lifecycle::Facts as JSON);
-- the boolean columns repeat it for operators' queries. `skeelo` is the subscription
-- as Skeelo last answered it (NULL: Skeelo does not hold it).
CREATE TABLE contracts (
    id            text PRIMARY KEY,
    facts         jsonb NOT NULL DEFAULT '{}'::jsonb,
    synced        boolean NOT NULL DEFAULT false,
    suspended     boolean NOT NULL DEFAULT false,
    blocked       boolean NOT NULL DEFAULT false,
    cancelled     boolean NOT NULL DEFAULT false,
    subscriber_id text,
    skeelo        jsonb,
    skeelo_status text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contracts_by_state ON contracts (cancelled, synced, suspended, blocked);

-- Every event id decided once; a second delivery of the same id is a duplicate.
-- The first result is kept so a redelivery can repeat it to the ERP.
CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    contract_id   text NOT NULL,
    type          text NOT NULL,
    outcome       text NOT NULL,
    skeelo_status text,
    detail        text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- A contract's story: what came, when, from whom, and how it ended (duplicates and
-- dead letters too). Operators read it with `skeelo-ops contract show`.
CREATE TABLE contract_events (
    id           bigserial PRIMARY KEY,
    contract_id  text NOT NULL,
    event_id     text NOT NULL,
    type         text NOT NULL,
    version      bigint,
    actor        text,
    occurred_at  timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL,
    skeelo_status text,
    skeelo_calls integer NOT NULL DEFAULT 0,
    detail       text NOT NULL
);
CREATE INDEX contract_events_by_contract ON contract_events (contract_id, id);
