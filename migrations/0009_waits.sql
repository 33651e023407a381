-- What the fleet waits for, where people can see it (`skeelo-ops explain`): an event's
-- next attempt after a failure (until the event ends), and Skeelo in outage mode as
-- each process sees it (a row refreshed while the process probes; stale rows are a
-- process that stopped, and are ignored).
CREATE TABLE event_retries (
    event_id    text PRIMARY KEY,
    contract_id text,
    type        text NOT NULL,
    attempt     integer NOT NULL,
    next_at     timestamptz NOT NULL,
    last_error  text NOT NULL,
    noted_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_retries_by_contract ON event_retries (contract_id);

CREATE TABLE outages (
    downstream text NOT NULL,
    process    text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    last_error text NOT NULL DEFAULT '',
    PRIMARY KEY (downstream, process)
);
