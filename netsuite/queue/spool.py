"""
The durable spool under C{DATA/queue}.

A queued message is one file, C{active/ID.msg}: its first line is the
envelope as it was accepted (JSON: sender, recipients with their own state,
size...), the rest is the message as received (LF line ends, never changed).
Accepting costs what a Maildir delivery costs: the file is written as
C{active/ID.new}, fsynced, renamed to C{ID.msg}, and C{active/} is fsynced;
only then does SMTP answer 250.  A message is in the queue exactly when its
C{.msg} exists.

Later states (attempts, per-recipient results, next attempt) go to
C{active/ID.env}, written to C{ID.env.tmp}, fsynced and renamed over; when
present it wins over the first line.  A remote server's 250 for a recipient
is appended at once to C{active/ID.sent} (one JSON list of addresses per
line, L{Spool.record_sent}), before anything else happens to the message, so
a restart never sends again what a remote already took.  Finishing removes
C{.msg}, then C{.env} and C{.sent}.  On start-up, L{Spool.recover} drops what
a crash can leave behind (C{.new}, C{.tmp}, spilled message bodies in
C{tmp/}, an C{.env} or C{.sent} whose message is gone) and moves an
unreadable message aside to C{corrupt/}.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from netsuite.durable import fsync_dir
from netsuite.store.maildir import clean_tmp_dir

log = Logger(namespace="netsuite.queue")

#: Queue ids: what the SMTP server puts in its Received header (hex), or ours.
QUEUE_ID = re.compile(r"^[0-9A-F]{8,32}$")
_RECEIVED_ID = re.compile(rb" id ([0-9A-F]{8,32})\b")

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass
class Recipient:
    address: str
    state: str = PENDING
    attempts: int = 0
    last_error: str = ""
    #: RFC 3463 status of the last reply (for the DSN).
    status: str = ""
    remote: str = ""
    last_attempt: float = 0.0
    #: A DSN (failure) or delay warning has been sent for this recipient.
    reported: bool = False


@dataclass
class Envelope:
    id: str
    #: The reverse path; "" for the null sender <> (bounces).
    sender: str
    recipients: list[Recipient]
    created: float = field(default_factory=time.time)
    #: Authenticated user who submitted it, if any.
    user: str | None = None
    size: int = 0
    hops: int = 0
    eightbit: bool = False
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    warned: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw: dict[str, Any] = json.loads(data)
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]


class IQueueSpool(Interface):
    """
    Where the runner keeps queued messages: files under C{DATA/queue}
    (L{Spool}, one host) or rows in PostgreSQL (L{netsuite.queue.pgspool.PgSpool},
    shared by every host on the database).  The runner asks C{shared}: a
    shared spool's messages are held only while claimed, and its operations
    return Deferreds (database threads); the file spool's are blocking and
    the runner runs the slow ones in its disk threads.
    """

    shared = Attribute("True if other processes work on the same messages (claims, leases)")
    tmp = Attribute("Path of the directory big messages are spilled to while they arrive")

    def new_id(hint: bytes = b"") -> str:
        """A queue id: the one the Received header in C{hint} names when free, else fresh."""

    def clean_tmp(max_age: float, now: float | None = None) -> int:
        """Remove spilled bodies older than C{max_age} seconds (blocking)."""


class ISharedQueueSpool(IQueueSpool):
    """
    A spool several processes and hosts work on at once (C{shared} is True):
    messages are held by a leased claim; every operation returns a Deferred.
    """

    lease = Attribute("Seconds a claim lasts past its last renewal")

    def accept(env: Envelope, message: bytes = b"", spilled: Path | None = None,
               prefix: bytes = b"", hint: bytes = b""):
        """Queue C{env} (its id chosen here), claimed by this process; fires once durable."""

    def mark_sent(env: Envelope, addresses: list[str]):
        """A remote's 250 for C{addresses}, recorded before anything else happens."""

    def body(qid: str):
        """Fires the message as queued."""

    def save(env: Envelope):
        """Save an attempt's outcome and give up the claim; fires False if it is not ours."""

    def discard(qid: str):
        """Remove a message (finished, or deleted by the administrator)."""

    def claim(limit: int, now: float, others: bool = True):
        """Claim up to C{limit} due messages: fires [(envelope, message)]."""

    def renew(qids: list[str]):
        """Push the lease of C{qids} forward: fires the ids still held."""

    def release():
        """Give up every claim of this process."""

    def depth():
        """Fires ({state: count} of the whole queue, the oldest arrival or None)."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(IQueueSpool)
class Spool:
    """The files; every method blocks (the runner calls the slow ones in threads)."""

    #: One process (or one host's workers through control requests) owns these files.
    shared = False

    def __init__(self, root: Path):
        self.root = Path(root)
        self.active = self.root / "active"
        self.tmp = self.root / "tmp"
        self.corrupt = self.root / "corrupt"
        self.control = self.root / "control"
        for d in (self.active, self.tmp, self.corrupt, self.control):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def msg_path(self, qid: str) -> Path:
        return self.active / f"{qid}.msg"

    def env_path(self, qid: str) -> Path:
        return self.active / f"{qid}.env"

    def sent_path(self, qid: str) -> Path:
        return self.active / f"{qid}.sent"

    def exists(self, qid: str) -> bool:
        return self.msg_path(qid).exists()

    def new_id(self, hint: bytes = b"") -> str:
        """The id from the SMTP Received header in C{hint} when free, else a fresh one."""
        m = _RECEIVED_ID.search(hint)
        if m:
            qid = m.group(1).decode()
            if not self._taken(qid):
                return qid
        while True:
            qid = secrets.token_hex(6).upper()
            if not self._taken(qid):
                return qid

    def _taken(self, qid: str) -> bool:
        return any(os.path.lexists(self.active / f"{qid}{ext}")
                   for ext in (".msg", ".new", ".env", ".sent"))

    # -- accepting -------------------------------------------------------------

    def commit(self, env: Envelope, message: bytes = b"", spilled: Path | None = None,
               prefix: bytes = b"") -> None:
        """
        Queue C{env} with its message (C{message}, or the file C{spilled} holds,
        which is then removed), after C{prefix} (headers added on the way in,
        such as DKIM signatures); returns once the message is durable.
        """
        new = self.active / f"{env.id}.new"
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, env.to_json() + b"\n")
            _write_all(fd, prefix)
            if spilled is not None:
                with open(spilled, "rb") as src:
                    while chunk := src.read(1 << 20):
                        _write_all(fd, chunk)
            _write_all(fd, message)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            new.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(new, self.msg_path(env.id))
        fsync_dir(self.active)
        if spilled is not None:
            spilled.unlink(missing_ok=True)

    add = commit

    # -- updating ----------------------------------------------------------------

    def update(self, env: Envelope) -> bool:
        """Durably replace the envelope; False if the message was deleted meanwhile."""
        if not self.exists(env.id):
            return False
        path = self.env_path(env.id)
        tmp = path.with_name(path.name + ".tmp")
        _write_synced(tmp, env.to_json())
        os.replace(tmp, path)
        fsync_dir(self.active)
        if not self.exists(env.id):  # deleted meanwhile: no stray envelope
            path.unlink(missing_ok=True)
            return False
        return True

    def record_sent(self, qid: str, addresses: list[str]) -> None:
        """
        Note that a remote server accepted C{addresses}: one small append,
        cheap enough for the reactor thread, so that a kill -9 right after the
        remote's 250 finds it (the kernel has it once write() returns).
        L{sync_sent} makes it survive a power loss too.
        """
        fd = os.open(self.sent_path(qid), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, json.dumps(addresses).encode() + b"\n")
        finally:
            os.close(fd)

    def sync_sent(self, qid: str) -> None:
        """fsync what L{record_sent} wrote (and its directory entry)."""
        try:
            fd = os.open(self.sent_path(qid), os.O_RDONLY)
        except FileNotFoundError:
            return  # removed meanwhile: finished
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.active)

    def _sent(self, qid: str) -> set[str]:
        """Every address recorded by L{record_sent}; a torn last line is ignored."""
        try:
            data = self.sent_path(qid).read_bytes()
        except FileNotFoundError:
            return set()
        done: set[str] = set()
        for line in data.split(b"\n")[:-1]:
            try:
                done.update(json.loads(line))
            except ValueError:
                continue
        return done

    def remove(self, qid: str, sync: bool = True) -> bool:
        """
        Take a message out of the queue; False if it was not there.  With
        C{sync=False} the caller calls L{sync} soon (several removals, one fsync).
        """
        existed = True
        try:
            os.unlink(self.msg_path(qid))
        except FileNotFoundError:
            existed = False
        self.env_path(qid).unlink(missing_ok=True)
        self.sent_path(qid).unlink(missing_ok=True)
        if sync:
            self.sync()
        return existed

    def sync(self) -> None:
        """Make every rename and removal in C{active/} durable."""
        fsync_dir(self.active)

    def read_message(self, qid: str) -> bytes:
        data = self.msg_path(qid).read_bytes()
        return data[data.index(b"\n") + 1:]

    def load(self, qid: str) -> Envelope:
        """
        The current envelope: the C{.env} if any, else the message file's first
        line; recipients recorded in C{.sent} are sent.
        """
        try:
            env = Envelope.from_json(self.env_path(qid).read_bytes())
        except FileNotFoundError:
            with open(self.msg_path(qid), "rb") as f:
                env = Envelope.from_json(f.readline())
        done = self._sent(qid)
        for r in env.recipients:
            if r.address in done and r.state == PENDING:
                r.state = SENT
        return env

    # -- start-up ------------------------------------------------------------------

    def recover(self) -> list[Envelope]:
        """Clean up after a crash; return every queued envelope, oldest first."""
        for name in os.listdir(self.tmp):
            (self.tmp / name).unlink(missing_ok=True)
        names = set(os.listdir(self.active))
        for name in sorted(names):
            path = self.active / name
            if name.endswith((".tmp", ".new")):
                path.unlink(missing_ok=True)
            elif name.endswith((".env", ".sent")) and name.rsplit(".", 1)[0] + ".msg" not in names:
                path.unlink(missing_ok=True)  # removal was cut short
        envelopes = []
        for name in sorted(names):
            if not name.endswith(".msg"):
                continue
            try:
                envelopes.append(self.load(name[:-4]))
            except (ValueError, TypeError, KeyError) as e:
                self._set_aside(name[:-4], f"unreadable envelope: {e}")
            except FileNotFoundError:
                continue
        envelopes.sort(key=lambda e: e.created)
        return envelopes

    def clean_tmp(self, max_age: float, now: float | None = None) -> int:
        """
        While running: remove spilled bodies in C{tmp/} older than C{max_age}
        seconds (a live session's file is being written, so it is fresh; at
        start-up L{recover} removes them all).
        """
        removed = clean_tmp_dir(self.tmp, max_age, now)
        if removed:
            log.info("queue: removed {n} leftover file(s) from tmp/", n=removed)
        return removed

    def _set_aside(self, qid: str, why: str) -> None:
        log.error("recover: moving {id} to corrupt/: {why}", id=qid, why=why)
        for path in (self.msg_path(qid), self.env_path(qid), self.sent_path(qid)):
            if path.exists():
                os.replace(path, self.corrupt / path.name)

    def list(self) -> list[Envelope]:
        """Every envelope now on disk (for the admin command), oldest first."""
        out = []
        for name in os.listdir(self.active):
            if name.endswith(".msg"):
                try:
                    out.append(self.load(name[:-4]))
                except (OSError, ValueError, TypeError, KeyError):
                    continue
        out.sort(key=lambda e: e.created)
        return out

    # -- control requests from the admin command ------------------------------------

    def request(self, action: str, qid: str = "ALL") -> Path:
        """Leave a request (C{flush}/C{delete}) for the running server to pick up."""
        path = self.control / f"{action}-{qid}"
        path.write_bytes(b"")
        return path

    def take_requests(self) -> builtins.list[tuple[str, str]]:
        out: builtins.list[tuple[str, str]] = []
        try:
            names = os.listdir(self.control)
        except FileNotFoundError:
            return out
        for name in sorted(names):
            action, _, qid = name.partition("-")
            try:
                os.unlink(self.control / name)
            except FileNotFoundError:
                continue
            # "load": a message another worker process queued (netsuite.workers).
            if action in ("flush", "delete", "load") and (qid == "ALL" or QUEUE_ID.match(qid)):
                out.append((action, qid))
        return out
