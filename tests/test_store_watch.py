"""Changes by other programs reach sessions through inotify (polling where it is missing)."""

from __future__ import annotations

import os
import poplib
import re
import subprocess

import pytest
from rawsmtp import insecure_context as tls_context
from test_imap import SIMPLE, USERS, RawIMAP, connect, put

from netsuite.store.folder import Folder
from netsuite.store.maildir import MaildirStore, unique_name

#: Not with NETSUITE_TEST_STORE=postgresql (the test is about the Maildir store):
#: other programs' changes to Maildir files, seen through inotify.
pytestmark = pytest.mark.maildir_only


@pytest.fixture
def daemon(make_daemon):
    # Polling an hour apart: only inotify can bring the changes below in time.
    return make_daemon(listeners=["imap", "imaps", "pop3"], users=USERS,
                       config={"store": {"poll_interval": 3600}})


def drop_into_new(d, user: str, data: bytes) -> str:
    """Deliver as procmail or Dovecot's deliver do: write in tmp/, rename into new/."""
    box = d.maildir(user)
    name = unique_name() + ".elsewhere"
    (box / "tmp" / name).write_bytes(data)
    os.rename(box / "tmp" / name, box / "new" / name)
    return name


def test_other_writers_reach_idle_and_other_sessions(daemon):
    put(daemon, "alice", SIMPLE)
    r = RawIMAP(daemon)
    r.login()
    r.send(b"s SELECT INBOX\r\n")
    assert r.until_tagged(b"s")[-1].startswith(b"s OK")
    other = connect(daemon)
    other.select("INBOX")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")

    name = drop_into_new(daemon, "alice", b"Subject: from procmail\n\nhi\n")
    assert r.line() == b"* 2 EXISTS\r\n"
    assert re.match(rb"\* \d RECENT\r\n", r.line())

    # Another program (mutt, Dovecot) marks it flagged: a rename into cur/.
    box = daemon.maildir("alice")
    subprocess.run(["mv", str(box / "new" / name), str(box / "cur" / f"{name}:2,F")],
                   check=True)
    line = r.line()
    assert line.startswith(b"* 2 FETCH (") and b"\\Flagged" in line, line

    # And deletes the first message.
    first = [n for n in os.listdir(box / "new") + os.listdir(box / "cur")
             if not n.startswith(name)]
    assert len(first) == 1
    sub = "new" if (box / "new" / first[0]).exists() else "cur"
    subprocess.run(["rm", str(box / sub / first[0])], check=True)
    assert r.line() == b"* 1 EXPUNGE\r\n"
    r.send(b"DONE\r\n")
    assert r.until_tagged(b"i")[-1].startswith(b"i OK")

    # The non-idle session learnt the same at its next command, from the shared folder.
    other.noop()
    assert b"1" in other.untagged_responses.get("EXPUNGE", [])
    typ, data = other.fetch("1", "(FLAGS)")
    assert typ == "OK" and b"\\Flagged" in data[0], data
    other.logout()
    r.close()

    # POP3 sees the drop-in at its next login.
    drop_into_new(daemon, "alice", b"Subject: third\n\nx\n")
    p = poplib.POP3("127.0.0.1", daemon.port("pop3"), timeout=10)
    p.stls(context=tls_context())
    p.user("alice")
    p.pass_(USERS["alice"])
    assert p.stat()[0] == 2
    p.quit()


def test_falls_back_to_polling_without_inotify(tmp_path, monkeypatch):
    from twisted.internet import inotify

    def refuse(*a, **kw):
        raise inotify.INotifyError("no inotify here")

    monkeypatch.setattr(inotify, "INotify", refuse)
    store = MaildirStore(tmp_path)
    folder = store.folder("alice")
    store.watch(folder, lambda f, c: None)
    try:
        assert store._watcher is None and store._poller is not None
    finally:
        store.unwatch(folder, folder.listeners[0])
    assert store._poller is None


class _FakeNotify:
    """twisted.internet.inotify.INotify's watch/ignore, the callbacks kept to be called."""

    def __init__(self):
        self.callbacks = {}

    def watch(self, path, mask, callbacks):
        self.callbacks[path.path] = callbacks

    def ignore(self, path):
        del self.callbacks[path.path]


def test_bursts_coalesce_into_one_refresh(tmp_path):
    from twisted.internet.task import Clock

    from netsuite.store.watch import COALESCE_DELAY, InotifyWatcher

    clock, notify, refreshed = Clock(), _FakeNotify(), []
    watcher = InotifyWatcher(notify, clock, refreshed.append)
    folder = Folder(tmp_path / "box")
    assert watcher.add(folder)
    assert sorted(notify.callbacks) == sorted(
        str(p) for p in (folder.path, folder.path / "new", folder.path / "cur"))
    for path, callbacks in list(notify.callbacks.items()) * 3:
        callbacks[0](None, path, 0)
    assert refreshed == []
    clock.advance(COALESCE_DELAY)
    assert refreshed == [folder]
    watcher.remove(folder)
    assert notify.callbacks == {}


def test_a_dear_refresh_is_spaced_out(tmp_path):
    """A folder whose refresh took long (a big directory scan) waits COST_FACTOR times that."""
    import time

    from twisted.internet.task import Clock

    from netsuite.store.watch import COALESCE_DELAY, COST_FACTOR, InotifyWatcher

    clock, notify, refreshed = Clock(), _FakeNotify(), []

    def slow_refresh(folder):
        refreshed.append(clock.seconds())
        time.sleep(0.05)

    watcher = InotifyWatcher(notify, clock, slow_refresh)
    folder = Folder(tmp_path / "box")
    assert watcher.add(folder)
    new = str(folder.path / "new")
    notify.callbacks[new][0](None, new, 0)
    clock.advance(COALESCE_DELAY)
    assert refreshed == [COALESCE_DELAY]  # the first: at once after its burst
    notify.callbacks[new][0](None, new, 0)
    clock.advance(COALESCE_DELAY)
    assert len(refreshed) == 1  # the next waits for 4 x the 50 ms the last one took
    clock.advance(COST_FACTOR * 0.1)  # (margin: a sleep on a busy machine overshoots)
    assert len(refreshed) == 2
    notify.callbacks[new][0](None, new, 0)
    watcher.remove(folder)  # a pending refresh goes with the watch
    clock.advance(10)
    assert len(refreshed) == 2 and not clock.getDelayedCalls()
