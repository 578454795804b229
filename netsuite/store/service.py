"""The C{[store]} config section: settings shared by POP3 and IMAP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer

from netsuite import protocols
from netsuite.config import ConfigError, positive, section

#: How often tmp/ leftovers are looked for (and once at start-up).
TMP_CLEAN_INTERVAL = 3600.0

#: What C{[store] backend} may name.
BACKENDS = ("maildir", "postgresql")


@section("store")
@dataclass
class StoreConfig:
    """Where shared state lives, and how the Maildir store watches and caches folders."""

    #: C{"maildir"}: one host (mail in Maildir, the login throttle in DATA/run);
    #: C{"postgresql"}: several hosts on C{[database] dsn} (mail, users, queue, the
    #: login throttle and the POP3 maildrop lock all there; docs/scale-out.md).
    backend: str = "maildir"

    #: Seconds between checks of open folders for changes by other programs
    #: (two stats per folder); deliveries by this server are seen at once.
    poll_interval: float = 2.0
    #: Folders (with their index) kept in memory after the last session closes.
    cache_folders: int = 64

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"expected one of {', '.join(BACKENDS)}, got {self.backend!r}",
                              "backend")
        positive("poll_interval", self.poll_interval)
        positive("cache_folders", self.cache_folders)


def configure_store(ctx) -> None:
    """Apply C{[store]} to the realm's store, if the realm has our kind of store."""
    store = getattr(ctx.realm, "store", None)
    cfg = ctx.config.sections.get("store")
    if store is None or cfg is None:
        return
    if hasattr(store, "poll_interval"):
        store.poll_interval = cfg.poll_interval
        store.cache_size = cfg.cache_folders


class StoreFlush(service.Service):
    """
    The store's C{flush} at stop: a child of the top service, so it runs once
    the sessions are drained (L{netsuite.shutdown.GracefulStop}) and the
    changes of the last ones are in it (a PostgreSQL STORE is answered before
    its row is written; a Maildir index may have unsaved changes).
    """

    def __init__(self, realm: Any):
        self.realm = realm

    def stopService(self) -> defer.Deferred:
        super().stopService()
        flush = getattr(getattr(self.realm, "store", None), "flush", None)
        return defer.maybeDeferred(flush) if flush is not None else defer.succeed(None)


def flush_store_at_stop(ctx, top) -> None:
    """SERVICE_HOOKS entry: L{StoreFlush} (the realm's store is looked up at stop)."""
    flush = StoreFlush(ctx.realm)
    flush.setName("store-flush")
    flush.setServiceParent(top)


def start_tmp_cleaner(ctx, top) -> None:
    """SERVICE_HOOKS entry: clean the store's tmp/ dirs at start-up, then hourly."""
    from twisted.application.internet import TimerService
    from twisted.internet import threads
    from twisted.logger import Logger

    if not hasattr(getattr(ctx.realm, "store", None), "clean_tmp"):
        return
    log = Logger(namespace="netsuite.store")

    def run():
        # The store as it is now: a later hook may have put another in (netsuite.store.pg).
        clean = getattr(getattr(ctx.realm, "store", None), "clean_tmp", None)
        if clean is None:
            return None
        d = threads.deferToThreadPool(ctx.reactor, ctx.reactor.getThreadPool(), clean)
        d.addErrback(lambda f: log.failure("tmp cleanup failed", f))
        return d

    timer = TimerService(TMP_CLEAN_INTERVAL, run)
    timer.clock = ctx.reactor
    timer.setName("store-tmp-cleaner")
    timer.setServiceParent(top)


protocols.SERVICE_HOOKS.append(start_tmp_cleaner)
protocols.SERVICE_HOOKS.append(flush_store_at_stop)
