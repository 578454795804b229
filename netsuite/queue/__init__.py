"""
The outgoing mail queue: a durable spool under C{DATA/queue}, an ESMTP client
that delivers it (static routes, a smarthost, or MX lookup), retries on a
schedule, and RFC 3464 bounces.  See docs/queue.md.
"""
