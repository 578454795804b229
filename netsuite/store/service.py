"""The C{[store]} config section: settings shared by POP3 and IMAP."""

from __future__ import annotations

from dataclasses import dataclass

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
    #: C{"postgresql"}: several hosts on C{[database] dsn} (the login throttle and
    #: the POP3 maildrop lock are shared there; mail itself stays in Maildir for now).
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
    if hasattr(store, "flush") and not getattr(store, "_flush_at_shutdown", False):
        store._flush_at_shutdown = True
        ctx.reactor.addSystemEventTrigger("before", "shutdown", store.flush)


def start_tmp_cleaner(ctx, top) -> None:
    """SERVICE_HOOKS entry: clean the store's tmp/ dirs at start-up, then hourly."""
    from twisted.application.internet import TimerService
    from twisted.internet import threads
    from twisted.logger import Logger

    store = getattr(ctx.realm, "store", None)
    if not hasattr(store, "clean_tmp"):
        return
    log = Logger(namespace="netsuite.store")

    def run():
        d = threads.deferToThreadPool(ctx.reactor, ctx.reactor.getThreadPool(),
                                      store.clean_tmp)
        d.addErrback(lambda f: log.failure("tmp cleanup failed", f))
        return d

    timer = TimerService(TMP_CLEAN_INTERVAL, run)
    timer.clock = ctx.reactor
    timer.setName("store-tmp-cleaner")
    timer.setServiceParent(top)


protocols.SERVICE_HOOKS.append(start_tmp_cleaner)
