-- netsuite schema version 1: users, the shared login throttle and locks, and the
-- mail tables the PostgreSQL mail store will fill (docs/scale-out.md).

-- Users of the 'sql' checker.  version goes up on every change of the row: the
-- verification cache (netsuite.auth.cache) keys on it, so a password changed on
-- one host is honoured by every host at its next login.
CREATE TABLE users (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$'),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2%'),
    quota         bigint CHECK (quota IS NULL OR quota >= 0),  -- bytes; NULL: [mail] quota
    disabled      boolean NOT NULL DEFAULT false,
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The failed-login throttle, shared by every host (netsuite.db.throttle).  Times
-- are the database's clock: one clock for all hosts.
CREATE TABLE throttle_failures (
    key text NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX throttle_failures_key ON throttle_failures (key, at);
CREATE TABLE throttle_locks (
    key   text PRIMARY KEY,
    until timestamptz NOT NULL
);

-- Leased locks held by a session on some host (the POP3 maildrop lock): a host
-- that dies leaves its locks to expire; a live one renews them.
CREATE TABLE session_locks (
    name    text PRIMARY KEY,
    holder  text NOT NULL,
    expires timestamptz NOT NULL
);

-- Mail (the PostgreSQL mail store; not used by this version yet).
CREATE TABLE accounts (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE folders (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          text NOT NULL,
    uidvalidity   bigint NOT NULL CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext       bigint NOT NULL DEFAULT 1 CHECK (uidnext BETWEEN 1 AND 4294967296),
    highestmodseq bigint NOT NULL DEFAULT 1,
    subscribed    boolean NOT NULL DEFAULT false,
    special_use   text CHECK (special_use IS NULL OR special_use ~ '^\\[A-Za-z]+$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

-- Subscriptions may name folders that do not exist (RFC 3501 6.3.6).
CREATE TABLE subscriptions (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       text NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- Bodies, once per content: identical copies (many recipients, COPY) share a row.
CREATE TABLE blobs (
    hash     bytea PRIMARY KEY,  -- SHA-256 of the body
    size     bigint NOT NULL,
    body     bytea NOT NULL,
    refcount bigint NOT NULL DEFAULT 0
);

CREATE TABLE messages (
    folder_id    bigint NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
    uid          bigint NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
    modseq       bigint NOT NULL,
    flags        text[] NOT NULL DEFAULT '{}',   -- system flags (\Seen, \Answered, ...)
    keywords     text[] NOT NULL DEFAULT '{}',
    internaldate timestamptz NOT NULL,
    size         bigint NOT NULL,
    content_hash bytea NOT NULL REFERENCES blobs (hash),
    cache        jsonb,                          -- the parsed envelope/structure
    PRIMARY KEY (folder_id, uid)
);
CREATE INDEX messages_modseq ON messages (folder_id, modseq);
CREATE INDEX messages_content ON messages (content_hash);

-- Every change of a user is told to every host (LISTEN netsuite_users; the payload is
-- the name): each keeps the names in memory for RCPT TO (netsuite.db.users.UserNames).
CREATE FUNCTION netsuite_users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('netsuite_users', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END
$$;
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION netsuite_users_changed();
