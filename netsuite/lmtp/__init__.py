"""LMTP (RFC 2033): deliveries from another MTA into netsuite's store, one reply per recipient."""
