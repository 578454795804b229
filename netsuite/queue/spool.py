"""
The durable spool under C{DATA/queue}.

Each message is two files in C{active/}: C{ID.msg}, the message as received
(LF line ends, never changed), and C{ID.env}, its envelope as JSON (sender,
recipients with their own state, attempts, next attempt, last error).  A
message is in the queue exactly when its C{.env} exists.

Accepting: C{ID.msg} is written and fsynced, C{ID.env} is written and fsynced,
then C{active/} is fsynced; only then does SMTP answer 250.  Updating: the
new envelope goes to C{ID.env.tmp}, is fsynced and renamed over C{ID.env}.
Finishing: C{ID.env} is removed before C{ID.msg}.  On start-up, L{Spool.recover}
drops what a crash can leave behind: a C{.msg} without an envelope (never
acknowledged), temporary files, and moves an unreadable envelope aside to
C{corrupt/}.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The files; every method blocks (the runner calls the slow ones in a thread)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.active = self.root / "active"
        self.corrupt = self.root / "corrupt"
        self.control = self.root / "control"
        for d in (self.active, self.corrupt, self.control):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def msg_path(self, qid: str) -> Path:
        return self.active / f"{qid}.msg"

    def env_path(self, qid: str) -> Path:
        return self.active / f"{qid}.env"

    def new_id(self, hint: bytes = b"") -> str:
        """The id from the SMTP Received header in C{hint} when free, else a fresh one."""
        m = _RECEIVED_ID.search(hint)
        if m:
            qid = m.group(1).decode()
            if not self.msg_path(qid).exists() and not self.env_path(qid).exists():
                return qid
        while True:
            qid = secrets.token_hex(6).upper()
            if not self.msg_path(qid).exists():
                return qid

    # -- accepting -------------------------------------------------------------

    def commit(self, fd: int, env: Envelope) -> None:
        """Finish a message whose C{.msg} is open as C{fd}: fsync it, write the envelope."""
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_synced(self.env_path(env.id), env.to_json(), exclusive=True)
        _fsync_dir(self.active)

    def add(self, env: Envelope, message: bytes) -> None:
        """Queue a whole message at once (bounces): same guarantees as L{commit}."""
        fd = os.open(self.msg_path(env.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            raise
        self.commit(fd, env)

    # -- updating ----------------------------------------------------------------

    def update(self, env: Envelope) -> bool:
        """Durably replace the envelope; False if the message was deleted meanwhile."""
        path = self.env_path(env.id)
        if not path.exists():
            return False
        tmp = path.with_name(path.name + ".tmp")
        _write_synced(tmp, env.to_json())
        os.replace(tmp, path)
        _fsync_dir(self.active)
        return True

    def remove(self, qid: str) -> bool:
        """Take a message out of the queue (envelope first); False if it was not there."""
        existed = True
        try:
            os.unlink(self.env_path(qid))
        except FileNotFoundError:
            existed = False
        try:
            os.unlink(self.msg_path(qid))
        except FileNotFoundError:
            pass
        _fsync_dir(self.active)
        return existed

    def read_message(self, qid: str) -> bytes:
        return self.msg_path(qid).read_bytes()

    def load(self, qid: str) -> Envelope:
        return Envelope.from_json(self.env_path(qid).read_bytes())

    # -- start-up ------------------------------------------------------------------

    def recover(self) -> list[Envelope]:
        """Clean up after a crash; return every queued envelope, oldest first."""
        envelopes = []
        names = set(os.listdir(self.active))
        for name in sorted(names):
            path = self.active / name
            if name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif name.endswith(".msg"):
                if name[:-4] + ".env" not in names:
                    log.info("recover: removing {name} (never accepted)", name=name)
                    path.unlink(missing_ok=True)
            elif name.endswith(".env"):
                qid = name[:-4]
                if qid + ".msg" not in names:
                    self._set_aside(path, "no message file")
                    continue
                try:
                    envelopes.append(Envelope.from_json(path.read_bytes()))
                except (ValueError, TypeError, KeyError) as e:
                    self._set_aside(path, f"unreadable envelope: {e}")
        envelopes.sort(key=lambda e: e.created)
        return envelopes

    def _set_aside(self, path: Path, why: str) -> None:
        log.error("recover: moving {name} to corrupt/: {why}", name=path.name, why=why)
        os.replace(path, self.corrupt / path.name)
        msg = path.with_suffix(".msg")
        if msg.exists():
            os.replace(msg, self.corrupt / msg.name)

    def list(self) -> list[Envelope]:
        """Every envelope now on disk (for the admin command), oldest first."""
        out = []
        for name in os.listdir(self.active):
            if name.endswith(".env"):
                try:
                    out.append(Envelope.from_json((self.active / name).read_bytes()))
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

    def take_requests(self) -> list[tuple[str, str]]:
        out = []
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
            if action in ("flush", "delete") and (qid == "ALL" or QUEUE_ID.match(qid)):
                out.append((action, qid))
        return out
