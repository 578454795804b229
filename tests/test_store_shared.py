"""
Two netsuite daemons and a third Maildir writer (as mutt) on one data directory:
one UID per message, the same UID in both daemons, no flag lost.
"""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time
import traceback

import pytest
from test_imap import USERS, connect

from netsuite.store.maildir import unique_name

#: Not with NETSUITE_TEST_STORE=postgresql (the test is about the Maildir store):
#: two daemons and mutt on one Maildir directory.
pytestmark = pytest.mark.maildir_only

SMTP_MESSAGES = 300  # split across both daemons, besides the third writer's
WRITER_MESSAGES = 20


@pytest.fixture
def pair(make_daemon):
    one = make_daemon(listeners=["smtp", "imaps"], users=USERS)
    two = make_daemon(listeners=["smtp", "imaps"], start=False,
                      config={"server": {"data_dir": str(one.data_dir)}})
    two.data_dir = one.data_dir  # where the harness looks for its listening.json
    return one, two.start()


def _message(tag: str) -> bytes:
    return (f"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@remote.test>\r\n\r\nbody of {tag}\r\n").encode()


def _smtp_sender(daemon, tags: list[str], errors: list) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port("smtp"), timeout=30) as s:
            for tag in tags:
                s.sendmail("bob@remote.test", ["alice@example.test"], _message(tag))
    except Exception:  # surfaced by the test
        errors.append(traceback.format_exc())


def _mutt_writer(box, tags: list[str], errors: list) -> None:
    """Deliver into new/ as any MDA does, then move to cur/ adding \\Seen, as mutt does."""
    try:
        for tag in tags:
            name = unique_name() + ".mutt"
            tmp = box / "tmp" / name
            tmp.write_bytes(_message(tag).replace(b"\r\n", b"\n"))
            os.rename(tmp, box / "new" / name)
            _mutt_mark_seen(box, name)
    except Exception:
        errors.append(traceback.format_exc())


def _mutt_mark_seen(box, name: str) -> None:
    """Rename into cur/ with S added, wherever the file is now (a server may have moved it)."""
    for _ in range(100):
        current = [box / "new" / name] + list((box / "cur").glob(name + ":2,*"))
        for path in current:
            letters = path.name.partition(":2,")[2]
            try:
                os.rename(path, box / "cur" / f"{name}:2,{''.join(sorted(set(letters + 'S')))}")
                return
            except FileNotFoundError:
                continue
    raise AssertionError(f"{name} vanished")


def _poker(daemon, ready: threading.Semaphore, stop: threading.Event, errors: list) -> None:
    """A selected session NOOPing all along, so the daemon looks at the folder often."""
    try:
        m = connect(daemon)
        m.select("INBOX")
        ready.release()
        while not stop.is_set():
            m.noop()
        m.logout()
    except Exception:
        errors.append(traceback.format_exc())


_MID = re.compile(rb"Message-ID: <([^>]+)>", re.I)
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def _view(m) -> tuple[int, dict[int, tuple[str, frozenset[str]]]]:
    """(UIDVALIDITY, UID -> (Message-ID, flags)) as one IMAP session sees the folder."""
    typ, data = m.select("INBOX")
    assert typ == "OK"
    validity = int(m.untagged_responses["UIDVALIDITY"][-1])
    typ, data = m.uid("FETCH", "1:*",
                      "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    view = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(_UID.search(item[0]).group(1))
        flags = frozenset(_FLAGS.search(item[0]).group(1).decode().split())
        mid = _MID.search(item[1]).group(1).decode()
        assert uid not in view
        view[uid] = (mid, flags - {"\\Recent"})
    return validity, view


def test_two_daemons_and_mutt_agree_on_every_uid_and_flag(pair):
    one, two = pair
    box = one.maildir("alice")
    errors: list = []
    stop = threading.Event()
    # Both daemons have the folder open (and keep looking) before mail arrives.
    ready = threading.Semaphore(0)
    pokers = [threading.Thread(target=_poker, args=(d, ready, stop, errors))
              for d in (one, two)]
    for t in pokers:
        t.start()
    for _ in pokers:
        assert ready.acquire(timeout=30), errors
    tags = [f"m{i}" for i in range(SMTP_MESSAGES)]
    senders = [threading.Thread(target=_smtp_sender,
                                args=((one, two)[i % 2], tags[i::6], errors))
               for i in range(6)]
    writer_tags = [f"w{i}" for i in range(WRITER_MESSAGES)]
    senders.append(threading.Thread(target=_mutt_writer, args=(box, writer_tags, errors)))
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    stop.set()
    for t in pokers:
        t.join(60)
    assert not errors, errors

    total = SMTP_MESSAGES + WRITER_MESSAGES
    m1, m2 = connect(one), connect(two)
    # Every message got a UID in both processes (each sees all of them).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        v1, view1 = _view(m1)
        v2, view2 = _view(m2)
        if len(view1) == len(view2) == total:
            break
    assert v1 == v2
    assert len(view1) == total
    ids1 = {uid: mid for uid, (mid, _) in view1.items()}
    ids2 = {uid: mid for uid, (mid, _) in view2.items()}
    # One UID per message, the same in both daemons.
    assert sorted(set(ids1.values())) == sorted(ids1.values())
    assert ids1 == ids2
    assert set(ids1.values()) == {f"{t}@remote.test" for t in tags + writer_tags}
    # mutt's \Seen is seen by both.
    for uid, (mid, flags) in {**view1, **view2}.items():
        assert ("\\Seen" in flags) == mid.startswith("w"), (uid, mid, flags)

    # Flags set in one daemon are seen by the other; concurrent changes to the
    # same messages from both lose nothing.
    uids = sorted(view1)
    some = ",".join(str(u) for u in uids[:40])
    for m, flag in ((m1, "\\Flagged"), (m2, "\\Answered"), (m1, "$Label1"), (m2, "$Label2")):
        typ, data = m.uid("STORE", some, "+FLAGS.SILENT", f"({flag})")
        assert typ == "OK", data
    want = {"\\Flagged", "\\Answered", "$Label1", "$Label2"}
    for m in (m1, m2):
        _, view = _view(m)
        for uid in uids[:40]:
            assert want <= view[uid][1], (uid, view[uid])
        for uid in uids[40:]:
            assert not (want & view[uid][1]), (uid, view[uid])
        # Nothing was renumbered by the flag changes.
        assert {u: mid for u, (mid, _) in view.items()} == ids1

    # A restart of one daemon reads the same UIDs back.
    m1.logout()
    one.restart()
    m1 = connect(one)
    v3, view3 = _view(m1)
    assert v3 == v1
    assert {u: mid for u, (mid, _) in view3.items()} == ids1
    for uid in uids[:40]:
        assert want <= view3[uid][1]
    m1.logout()
    m2.logout()


# -- unit: two Folder objects on one path stand for two processes -----------------------

def _two_folders(tmp_path):
    from netsuite.store.folder import Folder

    path = tmp_path / "box"
    return Folder(path), Folder(path)


def _drop(path, name: str) -> None:
    (path / "tmp" / name).write_bytes(b"Subject: " + name.encode() + b"\n\nx\n")
    os.rename(path / "tmp" / name, path / "new" / name)


def test_uids_given_by_one_folder_object_are_taken_by_the_other(tmp_path):
    a, b = _two_folders(tmp_path)
    _drop(a.path, "1.M1P1Q1.h")
    a.refresh()
    uid_b = b.append(b"Subject: b\n\n")
    _drop(a.path, "2.M1P1Q2.h")
    b.refresh()
    uid_a = a.append(b"Subject: a\n\n")
    a.refresh()
    b.refresh()
    view = lambda f: [(m.uid, m.base) for m in f.messages]  # noqa: E731
    assert view(a) == view(b)
    assert [u for u, _ in view(a)] == [1, 2, 3, 4]
    assert len({base for _, base in view(a)}) == 4
    assert (uid_b, uid_a) == (2, 4)
    assert a.next_uid == b.next_uid == 5


def test_flags_set_through_two_folder_objects_are_all_kept(tmp_path):
    a, b = _two_folders(tmp_path)
    uid = a.append(b"Subject: x\n\n")
    b.refresh()
    heard = []
    b.listeners.append(lambda folder, changes: heard.append(changes))
    a.set_flags([a.by_uid(uid)], ["\\Seen", "$Work"], 1)
    # b still has the old file name: its rename fails, it looks again, keeps \Seen.
    assert b.set_flags([b.by_uid(uid)], ["\\Flagged", "$Home"], 1)
    assert sorted(b.by_uid(uid).flags) == ["$Home", "$Work", "\\Flagged", "\\Seen"]
    a.refresh()
    assert sorted(a.by_uid(uid).flags) == ["$Home", "$Work", "\\Flagged", "\\Seen"]
    assert any(m.uid == uid for c in heard for m in c.flags)
    # A restart reads them all back.
    from netsuite.store.folder import Folder

    assert sorted(Folder(a.path).by_uid(uid).flags) == sorted(a.by_uid(uid).flags)


def test_expunge_in_one_is_heard_in_the_other_and_the_uid_never_comes_back(tmp_path):
    a, b = _two_folders(tmp_path)
    first = a.append(b"Subject: 1\n\n")
    second = a.append(b"Subject: 2\n\n")
    b.refresh()
    assert a.expunge([first]) == [first]
    changes = b.refresh()
    assert changes.expunged == [first]
    a.save()
    b.refresh()
    third = b.append(b"Subject: 3\n\n")
    assert third == 3 and [m.uid for m in b.messages] == [second, third]
    a.refresh()
    assert [m.uid for m in a.messages] == [second, third]


def test_uids_an_expunge_gives_on_a_second_look_are_taken_by_the_other(tmp_path):
    """An expunge whose file another program renamed looks at the directories
    again; a new file found then gets a UID, which the other process must hear."""
    a, b = _two_folders(tmp_path)
    doomed = a.append(b"Subject: doomed\n\n")
    b.refresh()
    msg = a.by_uid(doomed)
    # mutt marks it seen (a rename), and a delivery lands, neither through netsuite.
    os.rename(a.file_path(msg), a.path / "cur" / f"{msg.base}:2,S")
    _drop(a.path, "9.M1P1Q9.h")
    assert a.expunge([doomed]) == [doomed]
    found = next(m.uid for m in a.messages if m.base == "9.M1P1Q9.h")
    uid_b = b.append(b"Subject: b\n\n")
    assert uid_b != found
    a.refresh()
    b.refresh()
    view = lambda f: [(m.uid, m.base) for m in f.messages]  # noqa: E731
    assert view(a) == view(b)
    assert len({u for u, _ in view(a)}) == len(view(a)) == 2


def test_a_deleted_index_is_written_again_with_the_same_uids(tmp_path):
    a, b = _two_folders(tmp_path)
    a.append(b"Subject: 1\n\n")
    a.append(b"Subject: 2\n\n")
    validity = a.uidvalidity
    os.unlink(a.index_path)
    assert a.save()
    from netsuite.store.folder import Folder

    again = Folder(a.path)
    assert again.uidvalidity == validity
    assert [(m.uid, m.base) for m in again.messages] == [(m.uid, m.base) for m in a.messages]


def test_a_new_message_is_recent_for_one_process_only(tmp_path):
    """
    imaptest with --workers 2 saw \\Recent on one UID in two sessions: a claim was
    a pending record, so the other process, reading the log, claimed it again.
    """
    a, b = _two_folders(tmp_path)
    a.claim_recent(), b.claim_recent()  # both have seen everything so far
    uid = a.append(b"Subject: new\n\n")
    b.refresh()
    assert b.by_uid(uid) is not None
    claimed = [a.claim_recent(), b.claim_recent()]
    assert sorted(map(sorted, claimed)) == [[], [uid]]
    # Whichever process looks first claims it; the other never does, also later.
    _drop(a.path, "9.M1P1Q9.h")
    b.refresh()
    a.refresh()
    later = [b.claim_recent(), a.claim_recent()]
    assert sorted(map(len, later)) == [0, 1]
    assert a.first_recent == b.first_recent == a.next_uid
