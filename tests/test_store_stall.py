"""A slow disk flush in one session does not hold up another session's commands."""

from __future__ import annotations

import os
import smtplib
import threading
import time
from pathlib import Path

import pytest
from test_imap import USERS, RawIMAP

#: Not with NETSUITE_TEST_STORE=postgresql (the test is about the Maildir store):
#: the Maildir store's fsyncs and directory reads, stalled by a hook.
pytestmark = pytest.mark.maildir_only

ROOT = Path(__file__).resolve().parent.parent
HOOK = Path(__file__).resolve().parent / "hooks" / "fsync_stall"


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_an_fsync_stall_during_delivery_does_not_delay_a_noop(make_daemon, tmp_path):
    stall = tmp_path / "stall"
    stall.mkdir()
    d = make_daemon(listeners=["smtp", "imaps"], users=USERS, env={
        "NETSUITE_TEST_FSYNC_STALL": str(stall),
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT), str(ROOT / "examples")])})
    other = RawIMAP(d)
    other.login()
    other.send(b"s SELECT INBOX\r\n")
    assert other.until_tagged(b"s")[-1].startswith(b"s OK")
    (stall / "armed").touch()

    errors: list = []

    def deliver():
        try:
            with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30) as s:
                s.sendmail("bob@remote.test", ["alice@example.test"],
                           b"Subject: slow disk\r\n\r\nbody\r\n")
        except Exception as e:
            errors.append(e)

    smtp = threading.Thread(target=deliver)
    smtp.start()
    replies: list[bytes] = []
    # The delivery's fsyncs: the message, new/, the folder's index log.  While
    # each stalls, the other session's NOOP is answered.
    for n in (1, 2, 3):
        started = stall / f"start-{n}"
        assert _wait(started.exists), (n, errors)
        other.send(b"n%d NOOP\r\n" % n)
        replies += other.until_tagged(b"n%d" % n)
        assert replies[-1].startswith(b"n%d OK" % n)
        assert not (stall / f"done-{n}").exists(), \
            f"NOOP answered only after fsync {n} ({started.read_text()}) ended"
    smtp.join(30)
    assert not errors, errors
    other.send(b"e NOOP\r\n")
    replies += other.until_tagged(b"e")
    assert b"* 1 EXISTS\r\n" in replies
    other.close()


def _stalled_daemon(make_daemon, tmp_path, listeners=("imaps",), config=None):
    stall = tmp_path / "stall"
    stall.mkdir()
    d = make_daemon(listeners=list(listeners), users=USERS, config=config, env={
        "NETSUITE_TEST_FSYNC_STALL": str(stall),
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT), str(ROOT / "examples")])})
    return d, stall


def _noops_answered_during(other: RawIMAP, stall: Path, fsyncs: int, errors: list) -> list:
    """While each of the first C{fsyncs} stalled fsyncs runs, C{other}'s NOOP is answered."""
    replies: list[bytes] = []
    for n in range(1, fsyncs + 1):
        started = stall / f"start-{n}"
        assert _wait(started.exists), (n, errors)
        other.send(b"n%d NOOP\r\n" % n)
        replies += other.until_tagged(b"n%d" % n)
        assert replies[-1].startswith(b"n%d OK" % n)
        assert not (stall / f"done-{n}").exists(), \
            f"NOOP answered only after fsync {n} ({started.read_text()}) ended"
    return replies


APPENDS = {
    # name: (messages, fsyncs: one per file, then cur/, then the change log)
    "in-memory literal": ([b"Subject: small\r\n\r\nslow disk\r\n"], 3),
    "streamed literal": ([b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 2000], 3),
    "multiappend": ([b"Subject: one\r\n\r\n1\r\n",
                     b"Subject: two\r\n\r\n" + (b"y" * 98 + b"\r\n") * 1000], 4),
    # Into a folder not opened yet: first its first open (log, backup, index).
    "in-memory literal to a cold folder": ([b"Subject: small\r\n\r\ncold\r\n"], 6),
    "streamed literal to a cold folder": (
        [b"Subject: big\r\n\r\n" + b"z" * 78 + b"\r\n" * 2000], 6),
}


@pytest.mark.parametrize("case", list(APPENDS))
def test_an_fsync_stall_during_append_does_not_delay_a_noop(make_daemon, tmp_path, case):
    messages, fsyncs = APPENDS[case]
    box = b"Drafts" if "cold" in case else b"INBOX"
    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = RawIMAP(d)
    other.login()
    appender = RawIMAP(d)
    appender.login()
    if box == b"INBOX":
        other.send(b"s SELECT INBOX\r\n")
        assert other.until_tagged(b"s")[-1].startswith(b"s OK")
    (stall / "armed").touch()

    command = b"a APPEND " + box
    for body in messages:
        command += b" (\\Seen) {%d+}\r\n%s" % (len(body), body)
    appender.send(command + b"\r\n")
    errors: list = []
    replies = _noops_answered_during(other, stall, fsyncs, errors)
    done = appender.until_tagged(b"a")[-1]
    # The tagged OK only once every fsync has ended: the messages are durable.
    assert done.startswith(b"a OK [APPENDUID "), done
    assert (stall / f"done-{fsyncs}").exists()
    (stall / "armed").unlink()
    uids = done.split(b" ")[4].rstrip(b"]")
    if box != b"INBOX":
        other.send(b"s SELECT %s\r\n" % box)
    other.send(b"e NOOP\r\n")
    replies += other.until_tagged(b"e")
    assert b"* %d EXISTS\r\n" % len(messages) in replies
    other.send(b"f UID FETCH %s (FLAGS BODY.PEEK[])\r\n" % uids)
    fetched = b"".join(other.until_tagged(b"f"))
    for body in messages:
        assert body in fetched
    assert fetched.count(b"\\Seen") == len(messages)
    other.close()
    appender.close()


#: COPY and MOVE's fsyncs: into a folder in memory, its cur/ and change log; into
#: one not opened yet, first its first open's (log, backup, index) in a thread.
COPIES = {"COPY": (b"COPY", 2), "MOVE": (b"MOVE", 2), "COPY to a cold folder": (b"COPY", 5)}


@pytest.mark.parametrize("case", list(COPIES))
def test_an_fsync_stall_during_copy_does_not_delay_a_noop(make_daemon, tmp_path, case):
    command, fsyncs = COPIES[case]
    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = _idle_bob(d)
    alice = RawIMAP(d)
    alice.login()
    for i in range(3):
        body = b"Subject: %d\r\n\r\nx\r\n" % i
        alice.send(b"a%d APPEND INBOX (\\Seen $Kept) {%d+}\r\n%s\r\n" % (i, len(body), body))
        assert alice.until_tagged(b"a%d" % i)[-1].startswith(b"a%d OK" % i)
    alice.send(b"s SELECT INBOX\r\n")
    assert alice.until_tagged(b"s")[-1].startswith(b"s OK")
    if fsyncs == 2:
        alice.send(b"t STATUS Trash (MESSAGES)\r\n")
        assert alice.until_tagged(b"t")[-1].startswith(b"t OK")
    (stall / "armed").touch()
    alice.send(b"c %s 1:3 Trash\r\n" % command)
    _noops_answered_during(other, stall, fsyncs, [])
    replies = alice.until_tagged(b"c")
    # The tagged OK only once all have ended: the copies are durable.
    assert replies[-1].startswith(b"c OK"), replies
    assert (stall / f"done-{fsyncs}").exists()
    (stall / "armed").unlink()
    assert any(b"[COPYUID " in r and b" 1:3 1:3]" in r for r in replies), replies
    assert (b"* 3 EXPUNGE\r\n" in replies) == (command == b"MOVE")
    alice.send(b"f EXAMINE Trash\r\n")
    assert b"* 3 EXISTS\r\n" in alice.until_tagged(b"f")
    alice.send(b"g FETCH 1:3 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    fetched = b"".join(alice.until_tagged(b"g"))
    assert fetched.count(b"$Kept") == 3 and b"Subject: 2" in fetched
    alice.close()
    other.close()


#: Messages in the big folder a first open reads (and indexes, with three fsyncs).
BIG = 3000


def _big_folder(box: Path, count: int = BIG) -> None:
    """A Maildir with C{count} messages and no index yet, as another program left it."""
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    host = "stall-host.netsuite-tests.example"  # long names: long change-log records
    for i in range(count):
        (box / "cur" / f"{1700000000 + i}.M{i}P1Q{i}.{host},S=17:2,S").write_bytes(
            b"Subject: %d\n\nbody\n" % (i % 10))


def _idle_bob(d) -> RawIMAP:
    other = RawIMAP(d)
    other.login("bob")
    other.send(b"s SELECT INBOX\r\n")
    assert other.until_tagged(b"s")[-1].startswith(b"s OK")
    return other


def test_a_pop3_login_that_reads_a_big_inbox_does_not_delay_a_noop(make_daemon, tmp_path):
    import poplib

    from rawsmtp import insecure_context

    d, stall = _stalled_daemon(make_daemon, tmp_path, listeners=("imaps", "pop3s"))
    other = _idle_bob(d)
    _big_folder(d.data_dir / "mail" / "alice")
    (stall / "armed").touch()
    got: list = []
    errors: list = []

    def pop() -> None:
        try:
            p = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=insecure_context(),
                                timeout=60)
            p.user("alice")
            got.append(p.pass_(USERS["alice"]))
            got.append(p.stat())
            got.append(p.retr(BIG)[1])
            p.quit()
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=pop)
    th.start()
    # The INBOX's first open writes its index: log, backup, index, each fsynced.
    _noops_answered_during(other, stall, 3, errors)
    th.join(60)
    assert not errors, errors
    assert got[0].startswith(b"+OK Logged in, %d messages" % BIG)
    assert got[1][0] == BIG
    assert got[2] == [b"Subject: %d" % ((BIG - 1) % 10), b"", b"body"]
    other.close()


def test_a_pop3_quit_that_moves_to_trash_does_not_delay_a_noop(make_daemon, tmp_path):
    import poplib

    from rawsmtp import insecure_context

    d, stall = _stalled_daemon(make_daemon, tmp_path, listeners=("imaps", "pop3s"),
                               config={"pop3": {"on_delete": "trash"}})
    other = _idle_bob(d)
    _big_folder(d.data_dir / "mail" / "alice", 3)
    p = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=insecure_context(), timeout=60)
    p.user("alice")
    assert p.pass_(USERS["alice"]).startswith(b"+OK Logged in, 3 messages")
    p.dele(1)
    p.dele(3)
    (stall / "armed").touch()
    got: list = []
    errors: list = []

    def quit() -> None:
        try:
            got.append(p.quit())
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=quit)
    th.start()
    # Trash's first open (log, backup, index), then the copies' cur/ and log.
    _noops_answered_during(other, stall, 5, errors)
    th.join(60)
    assert not errors, errors
    assert got[0].startswith(b"+OK")
    assert (stall / "done-5").exists()  # the Bye only once the copies are durable
    (stall / "armed").unlink()
    assert d.wait_for(lambda: len(d.messages("alice")) == 1)
    assert sorted(d.messages("alice", "Trash")) == [b"Subject: 0\n\nbody\n",
                                                    b"Subject: 2\n\nbody\n"]
    other.close()


def test_a_status_that_reads_a_big_folder_does_not_delay_a_noop(make_daemon, tmp_path):
    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = _idle_bob(d)
    alice = RawIMAP(d)
    alice.login()
    big = d.data_dir / "mail" / "alice" / ".Big"
    _big_folder(big)
    (big / "maildirfolder").touch()
    (stall / "armed").touch()
    alice.send(b"s STATUS Big (MESSAGES UIDNEXT UNSEEN)\r\n")
    _noops_answered_during(other, stall, 3, [])
    replies = alice.until_tagged(b"s")
    assert replies[-1].startswith(b"s OK"), replies
    assert b"* STATUS Big (MESSAGES %d UIDNEXT %d UNSEEN 0)\r\n" % (BIG, BIG + 1) in replies
    # A folder that is not there is still a NO, as before.
    alice.send(b"t STATUS Nothere (MESSAGES)\r\n")
    assert alice.until_tagged(b"t")[-1].startswith(b"t NO [NONEXISTENT]")
    alice.close()
    other.close()


def test_a_delete_of_a_big_folder_does_not_delay_a_noop(make_daemon, tmp_path):
    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = _idle_bob(d)
    alice = RawIMAP(d)
    alice.login()
    root = d.data_dir / "mail" / "alice"
    _big_folder(root / ".Big", 500)
    (root / ".Big" / "maildirfolder").touch()
    alice.send(b"s STATUS Big (MESSAGES)\r\n")
    assert alice.until_tagged(b"s")[-1].startswith(b"s OK")
    (stall / "armed-rmdir").touch()
    alice.send(b"d DELETE Big\r\n")
    # Gone at once (a rename); its files and directories removed in a thread:
    # cur/, new/, tmp/ and the folder itself, each rmdir stalled.
    assert alice.until_tagged(b"d")[-1].startswith(b"d OK")
    _noops_answered_during(other, stall, 4, [])
    alice.send(b"l LIST \"\" \"*\"\r\n")
    listed = b"".join(alice.until_tagged(b"l"))
    assert b"Big" not in listed and b"#deleted" not in listed, listed
    assert d.wait_for(lambda: not [n for n in os.listdir(root) if "#deleted" in n], 30)
    (stall / "armed-rmdir").unlink()
    alice.send(b"c CREATE Big\r\n")  # the name is free again
    assert alice.until_tagged(b"c")[-1].startswith(b"c OK")
    alice.close()
    other.close()


def _inode(path: Path) -> int | None:
    """The file's inode; None in the instant a compaction puts a new index in place."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def test_an_fsync_stall_during_compaction_does_not_delay_a_noop(make_daemon, tmp_path):
    from netsuite.store import changelog
    from netsuite.store.folder import INDEX_NAME, Folder

    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = _idle_bob(d)
    big = d.data_dir / "mail" / "alice" / ".Big"
    _big_folder(big)
    (big / "maildirfolder").touch()
    alice = RawIMAP(d)
    alice.login()
    alice.send(b"s SELECT Big\r\n")
    assert alice.until_tagged(b"s")[-1].startswith(b"s OK")
    index = _inode(big / INDEX_NAME)
    (stall / "armed").touch()
    # One change-log record per message: past the compaction threshold.
    alice.send(b"f STORE 1:* +FLAGS.SILENT (\\Flagged $Big)\r\n")
    assert alice.until_tagged(b"f")[-1].startswith(b"f OK")
    # The compaction that follows: the fresh log, then the index, each fsynced.
    _noops_answered_during(other, stall, 2, [])
    alice.send(b"g NOOP\r\n")
    assert alice.until_tagged(b"g")[-1].startswith(b"g OK")
    # Put in place once written: a new index and an empty log.
    assert d.wait_for(lambda: _inode(big / INDEX_NAME) not in (index, None), 30)
    (stall / "armed").unlink()
    log_id = changelog.read_id(big / "netsuite-index.log")
    assert log_id is not None and log_id[1] == len(changelog.header(log_id[0]))
    # Read as another process would, from the index alone: every flag is there.
    after = Folder(big)
    assert len(after.messages) == BIG
    assert all(m.flags == ["\\Flagged", "\\Seen", "$Big"] for m in after.messages)
    assert not [n for n in os.listdir(big) if ".tmp." in n or ".new." in n]
    alice.close()
    other.close()


def test_changes_during_a_stalled_compaction_are_carried_over_off_the_reactor(
        make_daemon, tmp_path):
    from netsuite.store.folder import INDEX_NAME, Folder

    d, stall = _stalled_daemon(make_daemon, tmp_path)
    other = _idle_bob(d)
    big = d.data_dir / "mail" / "alice" / ".Big"
    _big_folder(big)
    (big / "maildirfolder").touch()
    alice = RawIMAP(d)
    alice.login()
    alice.send(b"s SELECT Big\r\n")
    assert alice.until_tagged(b"s")[-1].startswith(b"s OK")
    index = _inode(big / INDEX_NAME)

    def compacted() -> bool:
        return _inode(big / INDEX_NAME) not in (index, None)

    (stall / "armed").touch()
    alice.send(b"f STORE 1:* +FLAGS.SILENT (\\Flagged)\r\n")
    assert alice.until_tagged(b"f")[-1].startswith(b"f OK")
    # During every fsync of the compaction (its files, then the rounds that carry
    # over what is logged meanwhile) another change comes, and another session's
    # NOOP is answered before the fsync ends: no round falls back to the reactor.
    n = 0
    while n < 20:
        n += 1
        started = stall / f"start-{n}"
        assert _wait(lambda s=started: s.exists() or compacted(), 30), n
        if not started.exists():
            break
        alice.send(b"k%d STORE %d +FLAGS.SILENT ($During%d)\r\n" % (n, n, n))
        assert alice.until_tagged(b"k%d" % n)[-1].startswith(b"k%d OK" % n)
        other.send(b"n%d NOOP\r\n" % n)
        assert other.until_tagged(b"n%d" % n)[-1].startswith(b"n%d OK" % n)
        assert not (stall / f"done-{n}").exists(), \
            f"NOOP answered only after fsync {n} ({started.read_text()}) ended"
    assert n > 3, n  # the changes came during the job's rounds, and were carried
    assert d.wait_for(compacted, 30)
    alice.send(b"g NOOP\r\n")
    assert alice.until_tagged(b"g")[-1].startswith(b"g OK")
    (stall / "armed").unlink()
    # Read as another process would, from the new index and its log: every change.
    after = Folder(big)
    assert len(after.messages) == BIG
    for i, m in enumerate(after.messages, 1):
        want = ["\\Flagged", "\\Seen"] + ([f"$During{i}"] if i < n else [])
        assert m.flags == want, (i, m.flags)
    alice.close()
    other.close()


class SlowMessage:
    """
    One message file that is a FIFO: whoever reads it waits until the test
    writes it.  A read on the reactor thread would stall every session.
    """

    BODY = b"Subject: slow\n\nread at last\n"

    def __init__(self, box: Path):
        self.path = box / "cur" / "1800000000.M1P1Q1.slow,S=28:2,S"
        os.mkfifo(self.path)
        self.fd: int | None = None

    def being_read(self) -> bool:
        """Someone has it open for reading (a writer may then open it without waiting)."""
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    def finish(self) -> None:
        if self.fd is None:
            if not _wait(self.being_read, 30):
                return
        os.write(self.fd, self.BODY)
        os.close(self.fd)
        self.fd = None

    @classmethod
    def wire_size(cls) -> int:
        return len(cls.BODY) + cls.BODY.count(b"\n")


def test_a_pop3_login_that_reads_unknown_sizes_does_not_delay_a_noop(make_daemon, tmp_path):
    import poplib

    from rawsmtp import insecure_context

    d = make_daemon(listeners=["imaps", "pop3s"], users=USERS)
    other = _idle_bob(d)
    box = d.data_dir / "mail" / "alice"
    _big_folder(box, 100)
    slow = SlowMessage(box)
    got: list = []
    errors: list = []

    def pop() -> None:
        try:
            p = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=insecure_context(),
                                timeout=60)
            p.user("alice")
            got.append(p.pass_(USERS["alice"]))
            got.append(p.stat())
            p.quit()
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=pop)
    th.start()
    try:
        # The login reads the sizes no name says: the FIFO is being read now.
        assert _wait(slow.being_read, 30), errors
        other.send(b"n NOOP\r\n")
        assert other.until_tagged(b"n")[-1].startswith(b"n OK")
        assert not got
    finally:
        slow.finish()
    th.join(60)
    assert not errors, errors
    assert got[0].startswith(b"+OK Logged in, 101 messages")
    assert got[1] == (101, 100 * 20 + slow.wire_size())
    other.close()


def test_a_status_size_that_reads_unknown_sizes_does_not_delay_a_noop(make_daemon, tmp_path):
    d = make_daemon(listeners=["imaps"], users=USERS)
    other = _idle_bob(d)
    alice = RawIMAP(d)
    alice.login()
    big = d.data_dir / "mail" / "alice" / ".Big"
    _big_folder(big, 100)
    (big / "maildirfolder").touch()
    alice.send(b"s STATUS Big (MESSAGES)\r\n")  # in memory now, sizes not known
    assert alice.until_tagged(b"s")[-1].startswith(b"s OK")
    slow = SlowMessage(big)
    try:
        alice.send(b"t STATUS Big (MESSAGES SIZE)\r\n")
        assert _wait(slow.being_read, 30)
        other.send(b"n NOOP\r\n")
        assert other.until_tagged(b"n")[-1].startswith(b"n OK")
    finally:
        slow.finish()
    replies = alice.until_tagged(b"t")
    assert replies[-1].startswith(b"t OK"), replies
    assert b"* STATUS Big (MESSAGES 101 SIZE %d)\r\n" % (100 * 20 + slow.wire_size()) in replies
    alice.close()
    other.close()


def _unflagged(cur: Path, letter: str) -> int:
    return sum(1 for name in os.listdir(cur) if letter not in name.partition(":2,")[2])


def test_a_store_and_an_expunge_of_a_big_folder_do_not_hold_up_other_sessions(
        make_daemon, tmp_path):
    """
    STORE and EXPUNGE rename or unlink a file per message on the reactor: over a
    whole big folder they go a batch per turn, so another session's NOOP is
    answered while they are half done (each rename and unlink slowed by 1 ms).
    A reply written in one turn goes out in the next (after one more batch):
    three batches of EXPUNGE at least, so that one is left when it does.
    """
    d, stall = _stalled_daemon(make_daemon, tmp_path)
    box = d.maildir("alice")
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    count = 3000
    for i in range(count):
        (box / "cur" / f"{1600000000 + i}.M{i}P1.big:2,").write_bytes(
            b"Subject: %d\n\nbody\n" % i)
    worker, other = RawIMAP(d), RawIMAP(d)
    for c in (worker, other):
        c.login()
        c.send(b"s SELECT INBOX\r\n")
        assert b"* %d EXISTS\r\n" % count in c.until_tagged(b"s")
    for name, command, letter in (
            ("rename", b"t STORE 1:* +FLAGS.SILENT (\\Seen)", "S"),
            ("unlink", b"t EXPUNGE", None)):
        if letter is None:  # the expunge: everything \Deleted first (not slowed)
            worker.send(b"p STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n")
            assert worker.until_tagged(b"p")[-1].startswith(b"p OK")
        (stall / f"armed-{name}").touch()
        worker.send(command + b"\r\n")
        assert _wait((stall / f"slow-{name}").exists, 30)
        other.send(b"n NOOP\r\n")
        assert other.until_tagged(b"n")[-1].startswith(b"n OK")
        # Answered while the command was still at work on the files.
        left = _unflagged(box / "cur", letter) if letter else len(os.listdir(box / "cur"))
        assert left > 0, f"NOOP answered only after the whole {command!r}"
        assert worker.until_tagged(b"t")[-1].startswith(b"t OK")
        (stall / f"armed-{name}").unlink()
        left = _unflagged(box / "cur", letter) if letter else len(os.listdir(box / "cur"))
        assert left == 0, (command, left)
    worker.send(b"e NOOP\r\n")
    assert worker.until_tagged(b"e")[-1].startswith(b"e OK")
    other.send(b"e SEARCH ALL\r\n")  # every expunge told to the other session too
    assert other.until_tagged(b"e")[-2:] == [b"* SEARCH\r\n", b"e OK SEARCH completed\r\n"]
    for c in (worker, other):
        c.close()
