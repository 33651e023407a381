-- The operators' web console: its accounts (managed with `skeelo-ops user`) and their
-- sessions. Passwords are kept as Argon2id hashes; a session's token only as its
-- SHA-256, so a copy of this table opens no session.
CREATE TABLE console_users (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL,
    lang          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role IN ('viewer', 'operator'))
);

CREATE TABLE console_sessions (
    token_sha256 text PRIMARY KEY,
    user_name    text NOT NULL REFERENCES console_users (name) ON DELETE CASCADE,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
