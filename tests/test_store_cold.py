"""
A folder's first open (no index yet) gives every file its UID in one batch
(netsuite.store.folder: _allocate and its helpers).  The batch must give what
the per-file rules say: arrival order by the name's time, keywords from the
name's letters, sizes from ,W=, one MODSEQ each; and the UIDs stay across a
restart and a kill -9 of the daemon right after the first SELECT.
"""

from __future__ import annotations

import os
import random
import re
import socket

import pytest

from netsuite.store import folder as folder_module
from netsuite.store.folder import (
    Folder,
    _arrival,
    _arrival_sorted,
    _by_base_name,
    _first_listing,
    _message_names,
    split_name,
)

#: Not with NETSUITE_TEST_STORE=postgresql (the test is about the Maildir store):
#: the first open of a Maildir folder: UIDs given to its files.
pytestmark = pytest.mark.maildir_only

#: Names as Maildir writers make them, and the odd ones the helpers must
#: send down their slow path: other widths, no dot, non-ASCII digits, colons
#: that do not start an info, tabs, dot files.
ODD = ["1700000000.M5P1Q2.h", "1700000000.M40P1Q1.h", "1700000000.M40P1Q10.h",
       "1700000000.P9Q3M7.h", "1700000000.x", "999999999.M1P1.h", "17000000000.M1P1.h",
       "0999999999.M1P1.h", "nodot", "a.b.c", "1700000001", "١٧.M1P1.h", "²3.M1P1.h",
       "1700000002.M1P1.h", "1700000002.M01P1.h", ""]


def random_bases(rnd: random.Random, count: int, odd: bool) -> list[str]:
    bases = set()
    while len(bases) < count:
        sec = 1_700_000_000 + rnd.randrange(0 if odd else 50, 60)
        bases.add(f"{sec}.M{rnd.randrange(1000000)}P{rnd.randrange(1, 99)}"
                  f"Q{rnd.randrange(100)}.host{rnd.randrange(3)}")
    out = list(bases)
    if odd:
        out += rnd.sample(ODD, rnd.randrange(1, len(ODD)))
    rnd.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_arrival_sorted_is_the_per_name_sort(seed):
    rnd = random.Random(seed)
    bases = random_bases(rnd, rnd.randrange(0, 300), odd=seed % 2 == 1)
    assert _arrival_sorted(bases) == sorted(bases, key=_arrival)


def test_arrival_sorted_sorts_names_of_one_second_by_microseconds():
    # String order says M100 < M20; the arrival order says 20 microseconds first.
    bases = ["1700000000.M100P1.h", "1700000000.M20P1.h", "1699999999.M900P1.h"]
    assert _arrival_sorted(bases) == ["1699999999.M900P1.h", "1700000000.M20P1.h",
                                      "1700000000.M100P1.h"]


@pytest.mark.parametrize("seed", range(40))
def test_first_listing_is_the_general_path(seed):
    """
    A first open's listing (sorted as names, in parallel lists) is what the
    general path (a dict by base, sorted as bases) gives, also for bases that
    are prefixes of others (their names sort otherwise: ',' < ':').
    """
    rnd = random.Random(seed)
    bases = random_bases(rnd, rnd.randrange(0, 300), odd=seed % 2 == 1)
    bases += [b + ",S=5" for b in rnd.sample(bases, len(bases) // 4)]
    infos = ["", ":2,", ":2,S", ":2,RS", ":2,a", ":2,FSb"]
    disk: dict[str, set[str]] = {"new": set(), "cur": set()}
    for b in bases:
        sub = rnd.choice(("new", "cur"))
        disk[sub].add(b + (rnd.choice(infos) if sub == "cur" else ""))
    appeared: dict = {}
    for sub in ("new", "cur"):
        appeared.update(_by_base_name(sub, list(disk[sub])))
    order = _arrival_sorted(appeared)
    assert _first_listing(disk) == (order, [appeared[b][1] for b in order],
                                    [appeared[b][0] for b in order])


def test_a_first_open_with_one_base_in_new_and_cur_indexes_it_once(tmp_path):
    disk = {"new": {"1700000001.M1P1.h"}, "cur": {"1700000001.M1P1.h:2,S", "1700000000.x:2,"}}
    assert _first_listing(disk) is None  # the general path decides
    box = tmp_path / "box"
    make_folder(box, [(sub, name, b"x\n") for sub, names in disk.items() for name in names])
    f = Folder(box)
    assert [(m.uid, m.sub, m.name) for m in f.messages] == [
        (1, "cur", "1700000000.x:2,"), (2, "cur", "1700000001.M1P1.h:2,S")]


@pytest.mark.parametrize("names", [
    ["a:2,S", "b", "c:2,", "d:2,FRS"],
    ["a:1,x", "b:2,S"],                 # a colon that starts no ":2," info
    ["x:y:2,S", "z:2,S:2,a"],          # two colons, two infos
    ["plain", "other"],
])
def test_base_names_are_split_names(names):
    got = dict(_by_base_name("cur", names))
    assert got == {split_name(n)[0]: ("cur", n) for n in names}


@pytest.mark.parametrize("names", [
    ["a", "b:2,S"],
    ["a", ".hidden", "b"],
    ["a", "b\tc", "d"],
    ["a", "b\nc"],
    ["a.b", "c..d"],
    [],
])
def test_message_names_skip_dot_files_and_unindexable_names(names):
    assert _message_names(names) == {n for n in names if n[:1] != "." and "\t" not in n
                                     and "\n" not in n}


def make_folder(path, names_and_bodies):
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for sub, name, body in names_and_bodies:
        (path / sub / name).write_bytes(body)


def test_a_first_open_gives_what_the_per_file_rules_say(tmp_path):
    rnd = random.Random(5)
    box = tmp_path / "box"
    (box).mkdir()
    (box / "dovecot-keywords").write_text("0 $Forwarded\n1 Junk\n")
    files = []
    infos = ["", ":2,", ":2,S", ":2,RS", ":2,Sa", ":2,ab", ":2,FSb", ":2,z"]
    for i, base in enumerate(random_bases(rnd, 400, odd=False)):
        if i % 7 == 0:
            base += f",W={100 + i}"
        sub = "new" if i % 5 == 0 else "cur"
        info = "" if sub == "new" else rnd.choice(infos)
        files.append((sub, base + info, b"Subject: %d\n\n" % i))
    make_folder(box, files)
    f = Folder(box)
    order = sorted((split_name(name)[0] for _sub, name, _b in files), key=_arrival)
    assert [m.base for m in f.messages] == order
    assert [m.uid for m in f.messages] == list(range(1, len(order) + 1))
    assert f.next_uid == len(order) + 1
    # One MODSEQ per message, given in UID order.
    assert [m.modseq for m in f.messages] == list(range(1, len(order) + 1))
    assert f.highest_modseq == len(order)
    names = {"a": "$Forwarded", "b": "Junk"}
    for m in f.messages:
        sub, name = next((s, n) for s, n, _b in files if split_name(n)[0] == m.base)
        assert (m.sub, m.name) == (sub, name)
        letters = split_name(name)[1]
        assert m.keywords == tuple(names[c] for c in sorted(letters) if c in names)
        w = re.search(r",W=(\d+)", m.base)
        assert m.size == (int(w.group(1)) if w else -1)
        assert f.by_uid(m.uid) is m and f._by_base[m.base] is m
    assert f.keywords == {"$Forwarded", "Junk"}
    # The index holds it all: a fresh object (a restart) reads the same.
    again = Folder(box)
    assert [(m.uid, m.name, m.keywords, m.modseq) for m in again.messages] == \
        [(m.uid, m.name, m.keywords, m.modseq) for m in f.messages]
    assert again.uidvalidity == f.uidvalidity


def test_files_that_arrive_later_get_the_next_uids_in_one_log_append(tmp_path, monkeypatch):
    box = tmp_path / "box"
    make_folder(box, [("cur", f"{1700000000 + i}.M{i}P1.h:2,S", b"x\n") for i in range(5)])
    f = Folder(box)
    make_folder(box, [("new", f"{1700000100 + i}.M{i}P1.h", b"y\n") for i in range(300)])
    appends = []
    real = folder_module.changelog.append

    def counting(path, good, lines, durable):
        appends.append((len(lines), durable))
        return real(path, good, lines, durable)

    monkeypatch.setattr(folder_module.changelog, "append", counting)
    changes = f.refresh()
    assert [m.uid for m in changes.added] == list(range(6, 306))
    assert appends == [(300, True)]  # one write, fsynced: new UIDs
    again = Folder(box)
    assert [(m.uid, m.base) for m in again.messages] == [(m.uid, m.base) for m in f.messages]


# -- through the daemon --------------------------------------------------------------------

from test_imap import USERS, connect  # noqa: E402

BIG = 60


@pytest.fixture
def daemon(make_daemon):
    d = make_daemon(listeners=["imap", "imaps"], users=USERS, start=False)
    box = d.data_dir / "mail" / "alice" / ".Big"
    files = [("cur" if i % 4 else "new",
              f"{1700000000 + i}.M{i}P1.bench,S=20" + (":2,S" if i % 4 else ""),
              b"Subject: %d\n\nbody\n" % i) for i in range(BIG)]
    make_folder(box, files)
    (box / "maildirfolder").touch()
    return d.start()


def lock_waiters(path) -> list[int]:
    """PIDs waiting for the flock on C{path} (/proc/locks marks a waiter with '->')."""
    ino = os.stat(path).st_ino
    out = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{ino}"):
                out.append(int(fields[5]))
    return out


class Locked:
    """Holds a folder's netsuite-index.lock as another netsuite process would."""

    def __init__(self, box):
        import fcntl

        self.path = box / folder_module.LOCK_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def select_in_thread(m, name, out):
    import threading

    th = threading.Thread(target=lambda: out.append(m.select(name)), daemon=True)
    th.start()
    return th


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")
def test_a_first_open_does_not_stop_other_sessions(daemon):
    box = daemon.data_dir / "mail" / "alice" / ".Big"
    lock = Locked(box)
    try:
        a = connect(daemon)
        got: list = []
        th = select_in_thread(a, "Big", got)
        # The daemon reads the folder: it waits for the lock (held here).
        assert daemon.wait_for(lambda: daemon.proc.pid in lock_waiters(lock.path), 30)
        # Meanwhile another session logs in and works: nothing waits for that read.
        b = connect(daemon, "bob")
        assert b.noop()[0] == "OK"
        assert b.select("INBOX")[0] == "OK"
        b.logout()
        assert not got
    finally:
        lock.release()
    th.join(30)
    assert got == [("OK", [b"%d" % BIG])]
    typ, data = a.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK" and len(data) == BIG
    assert [int(re.search(rb"UID (\d+)", d).group(1)) for d in data] == \
        list(range(1, BIG + 1))
    a.logout()


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")
def test_sessions_that_open_a_folder_being_read_all_get_it(daemon):
    box = daemon.data_dir / "mail" / "alice" / ".Big"
    lock = Locked(box)
    clients, results, threads = [], [], []
    try:
        for _ in range(3):
            m = connect(daemon)
            out: list = []
            clients.append(m)
            results.append(out)
            threads.append(select_in_thread(m, "Big", out))
        assert daemon.wait_for(lambda: daemon.proc.pid in lock_waiters(lock.path), 30)
    finally:
        lock.release()
    for th in threads:
        th.join(30)
    assert [r for r in results] == [[("OK", [b"%d" % BIG])]] * 3
    validity = {m.response("UIDVALIDITY")[1][0] for m in clients}
    assert len(validity) == 1
    answers = {tuple(m.uid("FETCH", "1:*", "(UID)")[1]) for m in clients}
    assert len(answers) == 1
    # One folder object for all: a flag one session sets is news to the others.
    clients[0].uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    for m in clients[1:]:
        m.noop()
        typ, data = m.uid("FETCH", "1", "(FLAGS)")
        assert b"\\Flagged" in data[0]
    for m in clients:
        m.logout()


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")
def test_a_client_that_leaves_while_its_folder_is_read_harms_nobody(daemon):
    from rawsmtp import insecure_context

    box = daemon.data_dir / "mail" / "alice" / ".Big"
    lock = Locked(box)
    try:
        raw = insecure_context().wrap_socket(
            socket.create_connection(("127.0.0.1", daemon.port("imaps")), timeout=10))
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"a LOGIN alice %s\r\n" % USERS["alice"].encode())
        while not f.readline().startswith(b"a OK"):
            pass
        raw.sendall(b"b SELECT Big\r\n")
        assert daemon.wait_for(lambda: daemon.proc.pid in lock_waiters(lock.path), 30)
        f.close()
        raw.close()
    finally:
        lock.release()
    m = connect(daemon)
    assert m.select("Big") == ("OK", [b"%d" % BIG])
    m.logout()
    assert "Traceback" not in daemon.log()


def test_uids_of_a_first_open_survive_kill_9(daemon):
    m = connect(daemon)
    assert m.select("Big") == ("OK", [b"%d" % BIG])
    validity = m.response("UIDVALIDITY")[1][0]
    typ, first = m.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK" and len(first) == BIG
    daemon.kill9()  # right after the answers: the index must be on disk already
    daemon.start()
    m = connect(daemon)
    assert m.select("Big") == ("OK", [b"%d" % BIG])
    assert m.response("UIDVALIDITY")[1][0] == validity
    typ, again = m.uid("FETCH", "1:*", "(UID FLAGS)")
    # Same UIDs for the same files (\\Recent is not kept across a kill -9: no fsync).
    def strip(data):
        return [d.replace(b" \\Recent", b"").replace(b"\\Recent", b"") for d in data]

    assert strip(again) == strip(first)
    m.logout()


def flag_sets(data) -> dict[int, set[bytes]]:
    """UID -> its FLAGS, from FETCH answers."""
    out = {}
    for d in data:
        uid = int(re.search(rb"UID (\d+)", d).group(1))
        out[uid] = set(re.search(rb"FLAGS \(([^)]*)\)", d).group(1).split())
    return out


def test_fetch_1_star_flags_of_a_first_open_say_each_files_flags(make_daemon):
    """
    FETCH 1:* (UID FLAGS) renders runs of messages at once (all \\Recent, none,
    or mixed; with keywords or not): each answer is the message's own flags.
    """
    d = make_daemon(listeners=["imap", "imaps"], users=USERS, start=False)
    box = d.data_dir / "mail" / "alice" / ".Mix"
    # Keywords only in the first of the two runs of 4096 (FLAGS_CHUNK).
    infos = ["", ":2,", ":2,S", ":2,RS", ":2,FT", ":2,D"]
    keyworded = [":2,Sa", ":2,b"]
    files = [("new" if i % 9 == 0 else "cur",
              f"{1700000000 + i}.M{i}P1.h" + ("" if i % 9 == 0 else
                                              (keyworded + infos)[i % 8] if i < 200 else
                                              infos[i % len(infos)]),
              b"Subject: %d\n\nbody\n" % i) for i in range(5000)]
    for folder in ("Mix", "Mix2"):
        make_folder(box.with_name("." + folder), files)
        (box.with_name("." + folder) / "maildirfolder").touch()
        (box.with_name("." + folder) / "dovecot-keywords").write_text("0 $Forwarded\n1 Junk\n")
    d.start()
    letter_flags = {"D": b"\\Draft", "F": b"\\Flagged", "R": b"\\Answered", "S": b"\\Seen",
                    "T": b"\\Deleted", "a": b"$Forwarded", "b": b"Junk"}

    def expected(name: str) -> set[bytes]:
        return {letter_flags[c] for c in split_name(name)[1]}

    by_uid = {i + 1: name for i, (_s, name, _b) in enumerate(files)}
    a = connect(d)
    assert a.select("Mix")[0] == "OK"
    got = flag_sets(a.fetch("1:*", "(UID FLAGS)")[1])
    assert got == {u: expected(n) | {b"\\Recent"} for u, n in by_uid.items()}
    # More mail: a second session has only those as \Recent (a mixed run).
    make_folder(box, [("new", f"{1700009000 + i}.M{i}P1.h", b"x\n") for i in range(3)])
    b = connect(d)
    assert b.select("Mix")[0] == "OK"
    got = flag_sets(b.fetch("1:*", "(UID FLAGS)")[1])
    new = {5001: set(), 5002: set(), 5003: set()}
    assert got == {**{u: expected(n) for u, n in by_uid.items()},
                   **{u: {b"\\Recent"} for u in new}}
    assert flag_sets(b.fetch("4990:*", "(FLAGS UID)")[1]) == \
        {u: f for u, f in got.items() if u >= 4990}
    typ, uids = b.fetch("1:*", "(UID)")
    assert [int(re.search(rb"UID (\d+)", x).group(1)) for x in uids] == list(range(1, 5004))
    typ, flags_only = b.fetch("1:*", "(FLAGS)")
    assert [set(re.search(rb"FLAGS \(([^)]*)\)", x).group(1).split()) for x in flags_only] == \
        [got[u] for u in range(1, 5004)]
    # A session for which no message is \Recent any more.
    c = connect(d)
    assert c.select("Mix")[0] == "OK"
    assert flag_sets(c.fetch("1:*", "(UID FLAGS)")[1]) == \
        {**{u: expected(n) for u, n in by_uid.items()}, **new}
    # Another folder's first open, once renderings without \Recent are known too.
    assert c.select("Mix2")[0] == "OK"
    assert flag_sets(c.fetch("1:*", "(UID FLAGS)")[1]) == \
        {u: expected(n) | {b"\\Recent"} for u, n in by_uid.items()}
    for m in (a, b, c):
        m.logout()
