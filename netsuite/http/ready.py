"""
C{/readyz}: whether this process can serve (a load balancer's or an
orchestrator's readiness probe): every configured listener bound, the mail
store and the queue directories writable.  200 with every check true, 503
otherwise; the JSON body has each check's result.

The writability checks create and remove a real probe file (a read-only
remount, a full inode table or a directory replaced by a file all show),
in a thread: a slow disk must not stall the reactor.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.web.server import Request

from netsuite.http.site import OperationsSite, json_body, route
from netsuite.service import ListenerService

#: The probe file's name prefix (never a Maildir or spool name).
PROBE = ".netsuite-ready-"


def probe_writable(directory: Path) -> dict[str, Any]:
    """Create, write, fsync and remove a file in C{directory} (blocking: call in a thread)."""
    path = directory / f"{PROBE}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        # The store's root appears with the first mailbox: made here as it would be
        # then (not its parents: a vanished data directory is not ready).
        directory.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ready\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    except OSError as e:
        return {"ok": False, "path": str(directory), "error": e.strerror or str(e)}
    return {"ok": True, "path": str(directory)}


def listener_checks(top: Any) -> dict[str, dict[str, Any]]:
    """C{listen.NAME}: every endpoint of every configured listener has its port."""

    checks: dict[str, dict[str, Any]] = {}
    for svc in (top or ()):
        if not isinstance(svc, ListenerService):
            continue
        check = checks.setdefault(f"listen.{svc.listener}", {"ok": True, "bound": []})
        if svc.port is None:
            check["ok"] = False
            check.setdefault("unbound", []).append(svc.description)
        else:
            host = svc.port.getHost()
            bound = getattr(host, "port", None)
            check["bound"].append(bound if bound is not None
                                  else os.fsdecode(getattr(host, "name", b"") or b""))
    return checks


def directories(site: OperationsSite) -> dict[str, Path]:
    """The directories that must be writable: the mail store, and the queue when it runs."""
    ctx = site.ctx
    config = ctx.config
    store = getattr(getattr(ctx.realm, "store", None), "root", None)
    dirs = {"store": Path(store) if store is not None else config.data_dir / "mail"}
    queue = config.sections.get("queue")
    if queue is not None and getattr(queue, "enabled", False):
        dirs["queue"] = config.data_dir / "queue"
    return dirs


@defer.inlineCallbacks
def _readiness(request: Request, site: OperationsSite):
    checks: dict[str, dict[str, Any]] = listener_checks(site.ctx.top)
    for name, directory in directories(site).items():
        checks[name] = yield threads.deferToThreadPool(
            site.ctx.reactor, site.ctx.reactor.getThreadPool(), probe_writable, directory)
    ready = all(check["ok"] for check in checks.values())
    return json_body(request, {"status": "ready" if ready else "not ready",
                               "checks": checks}, 200 if ready else 503)


@route("/readyz")
def readyz(request: Request, site: OperationsSite) -> defer.Deferred:
    return _readiness(request, site)
