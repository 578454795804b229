"""The C{[store]} config section: settings shared by POP3 and IMAP."""

from __future__ import annotations

from dataclasses import dataclass

from netsuite.config import positive, section


@section("store")
@dataclass
class StoreConfig:
    """How the Maildir store watches and caches folders."""

    #: Seconds between checks of open folders for changes by other programs
    #: (two stats per folder); deliveries by this server are seen at once.
    poll_interval: float = 2.0
    #: Folders (with their index) kept in memory after the last session closes.
    cache_folders: int = 64

    def validate(self) -> None:
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
