"""
DNS for mail authentication through twisted.names: TXT lookups with a
timeout, against C{[dns] nameservers} (a test's DNS server on loopback) or
the system's resolv.conf.  Never blocks the reactor thread.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import client, dns, error
from twisted.python.failure import Failure

from netsuite.queue.wire import parse_hostport


def resolver(settings: Any, reactor: Any = None):
    """A twisted.names resolver for C{settings} (the C{[dns]} section)."""
    servers = [parse_hostport(s, 53) for s in settings.nameservers]
    return client.Resolver(resolv=None if servers else "/etc/resolv.conf",
                           servers=servers or None, timeout=(settings.timeout,),
                           reactor=reactor)


def lookup_txt(res, name: str) -> defer.Deferred:
    """The TXT strings at C{name} (each record's strings joined, RFC 6376 3.6.2.2)."""
    d = res.lookupText(name)

    def texts(result) -> list[str]:
        answers, _auth, _add = result
        return [b"".join(rr.payload.data).decode("utf-8", "replace")
                for rr in answers if rr.type == dns.TXT]

    return d.addCallback(texts)


def run_blocking(make: Any) -> Any:
    """
    For the command line: run the reactor until C{make()}'s Deferred fires,
    and return its result (or raise its failure).
    """
    from twisted.internet import reactor

    box: list = []

    def go() -> None:
        d = defer.maybeDeferred(make)

        def done(result):
            box.append(result)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def describe(failure: Failure, timeout: float) -> str:
    """A failed lookup in words: NXDOMAIN, timeout, or the server's error code."""
    if failure.check(error.DomainError, error.AuthoritativeDomainError):
        return "no such name (NXDOMAIN)"
    if failure.check(error.DNSQueryTimeoutError, defer.TimeoutError):
        return f"no answer in {timeout:g}s (timeout)"
    if failure.check(error.DNSServerError):
        return "server failure (SERVFAIL)"
    if failure.check(error.DNSNameError):
        return "no such name (NXDOMAIN)"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"[:200]
