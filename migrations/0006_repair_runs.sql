-- Drift repair runs: each comparison of the fleet's contracts with Skeelo, what it
-- found by kind of difference, and what it changed. A run that found more to change
-- than the blast-radius guard allows waits here for an operator's approval.
CREATE TABLE repair_runs (
    id            bigserial PRIMARY KEY,
    -- 'operator' (skeelo-ops check --repair) or 'periodic' (the fleet's reconciliation)
    trigger       text NOT NULL,
    requested_by  text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    -- Refreshed while the run works: a run whose heartbeat stopped (its process died)
    -- is abandoned, so it never blocks the next one.
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    state         text NOT NULL DEFAULT 'running',
    -- contracts compared with Skeelo, and those that differ
    compared      bigint NOT NULL DEFAULT 0,
    differing     bigint NOT NULL DEFAULT 0,
    -- {"status": 2, "products": 1, …}: differences found, by kind
    found         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- contracts the run would change, and the most the guard let it
    to_change     bigint NOT NULL DEFAULT 0,
    -- a run the guard stopped: the contracts it would change, all an approval covers
    scope         jsonb NOT NULL DEFAULT '[]'::jsonb,
    allowed       bigint NOT NULL DEFAULT 0,
    repaired      bigint NOT NULL DEFAULT 0,
    left_for_people bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    -- the run awaiting approval that this run carries out, and who approved it
    approves      bigint REFERENCES repair_runs (id),
    approved_by   text,
    note          text NOT NULL DEFAULT '',
    CHECK (trigger IN ('operator', 'periodic')),
    CHECK (state IN ('running', 'done', 'awaiting_approval', 'approved', 'failed', 'abandoned'))
);
-- At most one run works at a time, whichever process started it.
CREATE UNIQUE INDEX repair_runs_one_running ON repair_runs ((true)) WHERE state = 'running';
CREATE INDEX repair_runs_by_start ON repair_runs (started_at DESC);
