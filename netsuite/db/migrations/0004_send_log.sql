-- netsuite schema version 4: the queue's hourly sending counts shared by every
-- host (queue.messages_per_hour; netsuite.queue.pgsendlog), so that a user cannot
-- send N times the limit by landing on N hosts.  One row per accepted message,
-- on the database's clock; rows older than the hour are swept as messages come.
CREATE TABLE send_log (
    user_name text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX send_log_user_at ON send_log (user_name, at);
