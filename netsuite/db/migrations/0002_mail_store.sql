-- netsuite schema version 2: what the PostgreSQL mail store (netsuite.store.pg) needs
-- beyond the mail tables of version 1.

-- UIDVALIDITY is given per account, strictly increasing, never reused for a folder
-- deleted and made again (RFC 3501 2.3.1.1): the last one given.
ALTER TABLE accounts ADD COLUMN last_uidvalidity bigint NOT NULL DEFAULT 0;
-- Sent, Drafts, Trash, Junk made once, at the first login (a user may delete them).
ALTER TABLE accounts ADD COLUMN specials_made boolean NOT NULL DEFAULT false;

-- \Recent: UIDs from this one on were not yet told to any session (RFC 3501 2.3.2).
ALTER TABLE folders ADD COLUMN first_recent bigint NOT NULL DEFAULT 1;

-- Expunges with the MODSEQ they took, for hosts catching up (changes since a
-- MODSEQ) and for QRESYNC's VANISHED (EARLIER).
CREATE TABLE expunged (
    folder_id bigint NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
    uid       bigint NOT NULL,
    modseq    bigint NOT NULL,
    PRIMARY KEY (folder_id, uid)
);
CREATE INDEX expunged_modseq ON expunged (folder_id, modseq);

-- RFC 8474 EMAILID: one per message, kept by COPY and MOVE (the copy takes the
-- original's), the same on every host; and SAVEDATE (RFC 8514): when the row was
-- saved into its folder.
CREATE SEQUENCE message_email_ids;
ALTER TABLE messages ADD COLUMN email_id bigint NOT NULL DEFAULT nextval('message_email_ids');
ALTER TABLE messages ADD COLUMN saved_at timestamptz NOT NULL DEFAULT now();
