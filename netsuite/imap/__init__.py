"""IMAP4rev1 (RFC 3501) and the extensions clients rely on, over the Maildir store."""
