"""IMAP FETCH speed (issue 10): the parsed-message cache, FLAGS renderings, expunged messages."""

from __future__ import annotations

import os

import pytest
from test_imap import MULTIPART, SIMPLE, USERS, connect, put


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


def test_fetch_and_store_answer_for_remaining_when_some_expunged(daemon):
    """As Dovecot: OK [EXPUNGEISSUED] with data for the messages that remain (RFC 2180 4.1.2)."""
    for _ in range(3):
        put(daemon, "alice", SIMPLE)
    a = connect(daemon)
    b = connect(daemon)
    a.select("INBOX")
    b.select("INBOX")
    a.store("2", "+FLAGS", "(\\Deleted)")
    a.expunge()
    # B has not been told: its message 2 is gone, 1 and 3 remain.
    typ, data = b.fetch("1:3", "(UID RFC822.SIZE)")
    assert typ == "OK", data
    assert sorted(d.split(b" (")[0] for d in data if isinstance(d, bytes)) == [b"1", b"3"]
    typ, data = b.fetch("1:3", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    assert len([d for d in data if isinstance(d, tuple)]) == 2
    typ, data = b.store("1:3", "+FLAGS", "(\\Flagged)")
    assert typ == "OK", data
    flagged = [d for d in data if d and b"\\Flagged" in d]
    assert len(flagged) == 2
    typ, data = b.uid("FETCH", "1:3", "(FLAGS)")
    assert typ == "OK", data
    a.logout()
    b.logout()


THIRD = (b"From: Dave <dave@example.test>\nTo: alice@example.test\nSubject: lunch\n"
         b"Date: Tue, 3 Mar 2026 12:00:00 +0000\n\nSee you at noon.\n")

CACHED = "(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"


def message_files(d, user="alice") -> list:
    box = d.data_dir / "mail" / user
    return sorted(p for sub in ("cur", "new") for p in (box / sub).iterdir())


def shift(text: bytes) -> bytes:
    return bytes((b - 97 + 1) % 26 + 97 if 97 <= b <= 122 else b for b in text)


def scramble(path) -> None:
    """Same size, other bytes: lower-case letters shifted, header names kept."""
    data = path.read_bytes()
    head, sep, body = data.partition(b"\n\n")
    lines = []
    for line in head.split(b"\n"):
        name, colon, value = line.partition(b": ")
        lines.append(name + colon + shift(value) if colon and b" " not in name else shift(line))
    out = b"\n".join(lines) + sep + shift(body)
    assert out != data and len(out) == len(data)
    path.write_bytes(out)


def per_message(data) -> list[bytes]:
    """imaplib's FETCH data as one bytes string per message."""
    out: list[bytes] = []
    for item in data:
        if isinstance(item, tuple):
            out.append(b"".join(item))
        elif out:
            out[-1] += item
    return out


def fetch_all(d, what=CACHED) -> list:
    m = connect(d)
    m.select("INBOX")
    typ, data = m.fetch("1:*", what)
    assert typ == "OK", data
    m.logout()
    return per_message(data)


@pytest.mark.maildir_only  # the Maildir cache file and message files
def test_second_fetch_after_restart_reads_no_message_file(daemon):
    """ENVELOPE, BODYSTRUCTURE, BODY, header fields come from the cache, also after a restart.

    Tests run as root (chmod 000 proves nothing), so the proof is: after the first FETCH the
    files are rewritten with other bytes of the same size; the answers stay those of the
    original bytes, while a section that is not cached (BODY[TEXT]) shows the new bytes.
    """
    for data in (SIMPLE, MULTIPART, THIRD):
        put(daemon, "alice", data)
    first = fetch_all(daemon)
    assert b"lunch" in first[2] and b'"mixed"' in first[1]
    daemon.restart()
    for p in message_files(daemon):
        scramble(p)
    assert fetch_all(daemon) == first
    text = fetch_all(daemon, "(BODY.PEEK[TEXT])")
    assert b"Sff zpv bu oppo." in text[2]  # the file itself did change
    assert (daemon.data_dir / "mail" / "alice" / "netsuite-cache").exists()


@pytest.mark.maildir_only  # the Maildir folder's cache file, corrupted
def test_corrupt_or_torn_cache_is_ignored(daemon):
    for data in (SIMPLE, MULTIPART, THIRD):
        put(daemon, "alice", data)
    first = fetch_all(daemon)
    cache = daemon.data_dir / "mail" / "alice" / "netsuite-cache"
    good = cache.read_bytes()
    daemon.stop()
    for p in message_files(daemon):
        scramble(p)
    # A torn last record (message 3's header fields): the rest still counts.
    cache.write_bytes(good[:-5])
    daemon.start()
    torn = fetch_all(daemon)
    assert torn[:2] == first[:2]
    assert b"lunch" in torn[2]  # its ENVELOPE is still cached ...
    assert b"Subject: mvodi" in torn[2]  # ... its header fields were read again
    # A flipped byte inside message 2's ENVELOPE record: only that record is lost.
    data = bytearray(cache.read_bytes())
    data[data.index(b"report")] ^= 0x20
    cache.write_bytes(bytes(data))
    daemon.restart()
    again = fetch_all(daemon)
    assert again[0] == first[0]
    assert b'"sfqpsu"' in again[1] and b'"mixed"' in again[1]
    # Garbage from the first byte: the file is ignored and rebuilt from the messages.
    cache.write_bytes(os.urandom(300))
    daemon.restart()
    fresh = fetch_all(daemon)
    assert b"mvodi" in fresh[2] and b"lunch" not in b"".join(fresh)
    assert cache.read_bytes().startswith(b"netsuite-cache 1\n")


@pytest.mark.maildir_only  # the Maildir folder's cache file
def test_cache_drops_expunged_messages(daemon):
    for data in (SIMPLE, MULTIPART, THIRD):
        put(daemon, "alice", data)
    fetch_all(daemon)
    cache = daemon.data_dir / "mail" / "alice" / "netsuite-cache"
    doomed = message_files(daemon)[1].name.split(":2,")[0].encode()
    assert doomed in cache.read_bytes()
    m = connect(daemon)
    m.select("INBOX")
    m.store("2", "+FLAGS", "(\\Deleted)")
    m.expunge()
    m.logout()
    daemon.restart()
    assert len(fetch_all(daemon)) == 2
    assert doomed not in cache.read_bytes()


@pytest.mark.maildir_only  # a big Maildir folder written as files
def test_flags_fetch_of_a_big_folder_in_chunks(daemon):
    """Over FLAGS_CHUNK messages FETCH (UID FLAGS) is written in paced chunks: all, in order."""
    from netsuite.imap.commands.fetch import FLAGS_CHUNK

    count = FLAGS_CHUNK + 1500
    box = daemon.data_dir / "mail" / "alice"
    m = connect(daemon)  # creates the Maildir
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        flags = "S" if i % 3 else ("FS" if i % 2 else "")
        (box / "cur" / f"{1_700_000_000 + i}.M{i}P1.test,S=20:2,{flags}").write_bytes(
            b"Subject: %d\n\nbody\n" % i)
    m.select("INBOX")
    typ, data = m.fetch("1:*", "(UID FLAGS)")
    assert typ == "OK"
    assert len(data) == count
    for i, line in enumerate(data):
        names = ["\\Seen"] if i % 3 else (["\\Flagged", "\\Seen"] if i % 2 else [])
        # This first session holds every message as \\Recent.
        flags = " ".join([*names, "\\Recent"])
        assert line.decode() == f"{i + 1} (UID {i + 1} FLAGS ({flags}))"
    typ, data = m.fetch("2:*", "(FLAGS UID)")
    assert typ == "OK" and len(data) == count - 1
    assert data[-1].decode().startswith(f"{count} (FLAGS ")
    typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK" and len(data) == count
    other = connect(daemon)  # served while the big FETCHes ran
    assert other.noop()[0] == "OK"
    other.logout()
    m.logout()


@pytest.mark.maildir_only  # a flag changed by renaming a Maildir file
def test_shared_flags_rendering_follows_every_change(daemon):
    """FETCH 1:* (UID FLAGS) bytes shared between sessions are dropped on any change."""
    for _ in range(3):
        put(daemon, "alice", SIMPLE)
    first = connect(daemon)
    first.select("INBOX")  # takes \\Recent: the sessions below share renderings
    b = connect(daemon)
    c = connect(daemon)
    b.select("INBOX")
    c.select("INBOX")
    assert b.fetch("1:*", "(UID FLAGS)")[1] == [b"1 (UID 1 FLAGS ())", b"2 (UID 2 FLAGS ())",
                                                b"3 (UID 3 FLAGS ())"]
    c.store("2", "+FLAGS.SILENT", "(\\Flagged)")
    assert b.fetch("1:*", "(UID FLAGS)")[1][1] == b"2 (UID 2 FLAGS (\\Flagged))"
    assert c.fetch("1:*", "(UID FLAGS)")[1][1] == b"2 (UID 2 FLAGS (\\Flagged))"
    # Another program renames a file (a flag change on disk): seen after the refresh.
    path = next(p for p in message_files(daemon) if p.name.endswith(":2,F"))
    os.rename(path, path.with_name(path.name.split(":2,")[0] + ":2,FS"))
    b.noop()
    daemon.wait_for(lambda: b"\\Seen" in b.fetch("2", "(FLAGS)")[1][0])
    assert b.fetch("1:*", "(UID FLAGS)")[1][1] == b"2 (UID 2 FLAGS (\\Flagged \\Seen))"
    data = c.fetch("1:*", "(UID FLAGS)")[1]
    assert data[1] == b"2 (UID 2 FLAGS (\\Flagged \\Seen))", data
    for m in (first, b, c):
        m.logout()
