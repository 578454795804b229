-- netsuite schema version 3: the outgoing queue shared by every host
-- (netsuite.queue.pgspool; docs/scale-out.md, "The outgoing queue in PostgreSQL").

-- One row per queued message: the envelope's facts, the message as received
-- (after the headers added on the way in), and the claim of the host working
-- on it.  A host claims due rows with SELECT ... FOR UPDATE SKIP LOCKED and
-- holds them by its lease (lease_until, the database's clock), which it renews
-- while it delivers; a host that dies leaves its rows to whoever claims them
-- once the lease has passed.
CREATE TABLE queue_messages (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9A-F]{8,32}$'),
    sender       text NOT NULL,          -- '' for the null sender <>
    user_name    text,                   -- the authenticated submitter, if any
    created      double precision NOT NULL,  -- arrival, seconds since the epoch
    size         bigint NOT NULL,
    hops         integer NOT NULL DEFAULT 0,
    eightbit     boolean NOT NULL DEFAULT false,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL DEFAULT 0,  -- seconds since the epoch
    last_error   text NOT NULL DEFAULT '',
    warned       boolean NOT NULL DEFAULT false,
    body         bytea NOT NULL,
    claimed_by   text,                   -- host:pid:nonce of the claiming process
    lease_until  timestamptz
);
CREATE INDEX queue_messages_due ON queue_messages (next_attempt);

-- Per-recipient state: a remote's 250 marks its recipients sent at once, so
-- whoever takes the message over sends only to those still pending.
CREATE TABLE queue_recipients (
    message_id   text NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    address      text NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'sent', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT '',
    remote       text NOT NULL DEFAULT '',
    last_attempt double precision NOT NULL DEFAULT 0,
    reported     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (message_id, position)
);
