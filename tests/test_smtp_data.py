"""
DATA into the Maildir against the real daemon, with raw sockets: how the
bytes on the wire become the stored file (dot-stuffing, bare LF and CR, any
split into TCP segments, the size limit to the byte, a message held in
memory and one spilled to its file as it arrives), and that every 250 means
the message is on disk, even for many concurrent deliveries killed at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from harness import Daemon
from rawsmtp import RawSMTP

from netsuite.store.maildir import MaildirDelivery

#: Above MaildirDelivery.SPILL, so that the limit is tested on the path that
#: writes a message to its file as it arrives.
MAX_SIZE = MaildirDelivery.SPILL + 50_000


@pytest.fixture(scope="module")
def mx(tmp_path_factory, mail_store):
    d = Daemon(tmp_path_factory.mktemp("data"), listeners=["smtp"],
               config={"smtp": {"max_message_size": MAX_SIZE, "max_connections": 100,
                                "max_connections_per_address": 100}})
    d.add_user("alice", "alice-pw")
    d.start()
    yield d
    d.stop()


def body_of(stored: bytes) -> bytes:
    """The stored message without the Return-Path and Received lines the server adds."""
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <") and lines[1].startswith(b"Received: ")
    i = 2
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def open_data(d: Daemon, rcpt: bytes = b"alice@example.test") -> RawSMTP:
    raw = RawSMTP(d.port("smtp"))
    assert raw.cmd(b"EHLO client.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<" + rcpt + b">")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    return raw


def stored_with(d: Daemon, marker: bytes) -> list[bytes]:
    return [m for m in d.messages("alice") if marker in m]


def test_dot_stuffed_lines_are_unstuffed_and_only_a_lone_dot_ends(mx):
    raw = open_data(mx)
    raw.send(b"Subject: dots-1\r\n\r\n..\r\n...\r\n..leading\r\n.x\r\nmid.dle\r\n"
             b"\r\n..\r\nlast\r\n.\r\n")
    code, text = raw.reply()
    assert code == 250, text
    raw.close()
    [stored] = stored_with(mx, b"dots-1")
    assert body_of(stored) == b"Subject: dots-1\n\n.\n..\n.leading\nx\nmid.dle\n\n.\nlast\n"


def test_bare_lf_and_bare_cr_stay_inside_their_line(mx):
    raw = open_data(mx)
    # A bare LF dot line is content, never the end (SMTP smuggling).
    raw.send(b"Subject: bare-1\r\n\r\none\ntwo\r\nthree\rfour\r\n\n.\nafter\r\n.\r\n")
    code, text = raw.reply()
    assert code == 250, text
    assert raw.cmd(b"NOOP")[0] == 250
    raw.close()
    [stored] = stored_with(mx, b"bare-1")
    assert body_of(stored) == b"Subject: bare-1\n\none\ntwo\nthree\rfour\n\n.\nafter\n"


def test_any_split_into_segments_stores_the_same_bytes(mx):
    """Every byte its own send (no Nagle): lines, CRLFs and the final dot split anywhere."""
    message = (b"Subject: split-1\r\n\r\n..stuffed\r\nplain\r\n..\r\n\r\n..x\r\n"
               b"bare\nlf\r\nend")
    raw = open_data(mx)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(message)):
        raw.send(message[i:i + 1])
    for byte in (b"\r", b"\n", b".", b"\r", b"\n"):
        raw.send(byte)
    code, text = raw.reply()
    assert code == 250, text
    raw.close()
    [stored] = stored_with(mx, b"split-1")
    assert body_of(stored) == b"Subject: split-1\n\n.stuffed\nplain\n.\n\n.x\nbare\nlf\nend\n"


def _exact(size: int, marker: bytes) -> tuple[bytes, bytes]:
    """
    A message of exactly C{size} bytes as SMTP counts it (CRLF lines, dots
    unstuffed, the final dot line not counted): what goes on the wire, its
    dot-stuffed form, and what is stored (LF lines).
    """
    head = b"Subject: " + marker + b"\r\n\r\n.dot\r\n"
    line = b"y" * 998 + b"\r\n"
    body = line * ((size - len(head) - 2) // len(line))
    content = head + body + b"z" * (size - len(head) - len(body) - 2) + b"\r\n"
    assert len(content) == size
    return content.replace(b"\r\n.", b"\r\n.."), content.replace(b"\r\n", b"\n")


def test_a_message_of_exactly_the_size_limit_is_accepted_one_byte_more_is_not(mx):
    wire, stored = _exact(MAX_SIZE, b"exact-1")
    raw = open_data(mx)
    raw.send(wire + b".\r\n")
    code, text = raw.reply()
    assert code == 250, text
    raw.close()
    [got] = stored_with(mx, b"exact-1")
    assert body_of(got) == stored

    wire, _ = _exact(MAX_SIZE + 1, b"exact-2")
    raw = open_data(mx)
    raw.send(wire + b".\r\n")
    code, text = raw.reply()
    assert code == 552 and text.startswith(b"5.3.4"), (code, text)
    assert raw.cmd(b"NOOP")[0] == 250
    raw.close()
    assert stored_with(mx, b"exact-2") == []
    if not mx.in_postgresql:  # (no file to leave there)
        assert list((mx.maildir("alice") / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [1000, MaildirDelivery.SPILL, MaildirDelivery.SPILL + 1,
                                  MAX_SIZE - 10])
def test_held_and_spilled_messages_are_stored_byte_exact(mx, size):
    marker = b"held-%d" % size
    wire, stored = _exact(size, marker)
    raw = open_data(mx)
    raw.send(wire + b".\r\n")
    code, text = raw.reply()
    assert code == 250, text
    raw.close()
    [got] = stored_with(mx, marker)
    assert body_of(got) == stored
    if mx.in_postgresql:
        return  # the rest is the Maildir file's name and tmp/
    name = [p.name for p in (mx.maildir("alice") / "new").iterdir()
            if marker in p.read_bytes()][0]
    assert name.endswith(f",S={len(got)}")
    assert list((mx.maildir("alice") / "tmp").iterdir()) == []


@pytest.mark.maildir_only  # the mailbox directory removed behind the server
def test_a_mailbox_removed_while_running_is_made_again_on_delivery(mx):
    raw = open_data(mx)
    raw.send(b"Subject: gone-1\r\n\r\nfirst\r\n.\r\n")
    assert raw.reply()[0] == 250
    # An admin removes the mailbox; the server delivered to it before.
    shutil.rmtree(mx.maildir("alice"))
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: gone-2\r\n\r\nsecond\r\n.")
    assert code == 250, text
    raw.close()
    assert [body_of(m) for m in mx.messages("alice")] == [b"Subject: gone-2\n\nsecond\n"]


def test_every_250_of_concurrent_deliveries_survives_a_kill9(make_daemon):
    """
    Twenty sessions deliver as fast as they can; the moment the server has
    answered the 60th 250, it is killed (SIGKILL: nothing more is written).
    Every message answered 250 must be a file in new/.
    """
    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw"},
                    config={"smtp": {"max_connections": 100,
                                     "max_connections_per_address": 100}})
    port = d.port("smtp")
    lock = threading.Lock()
    accepted: list[bytes] = []
    killed = threading.Event()
    errors: list[BaseException] = []
    target = 60

    def session(n: int) -> None:
        try:
            raw = RawSMTP(port, timeout=20)
            raw.cmd(b"EHLO client.test")
            for i in range(100):
                marker = b"kill-%d-%d" % (n, i)
                raw.cmd(b"MAIL FROM:<x@remote.test>")
                raw.cmd(b"RCPT TO:<alice@example.test>")
                raw.cmd(b"DATA")
                raw.send(b"Subject: " + marker + b"\r\n\r\n" + b"b" * 4000 + b"\r\n.\r\n")
                code, _text = raw.reply()
                assert code == 250, code
                with lock:
                    if killed.is_set():
                        return
                    accepted.append(marker)
                    if len(accepted) == target:
                        killed.set()  # first: the other sessions' errors are expected now
                        d.kill9()
                        return
        except (ConnectionError, OSError) as e:
            if not killed.is_set():
                errors.append(e)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert killed.is_set() and len(accepted) == target
    on_disk = b"\n".join(d.messages("alice"))
    missing = [m for m in accepted if m + b"\n" not in on_disk]
    assert missing == [], f"{len(missing)} of {target} accepted messages lost"


HOOK = Path(__file__).resolve().parent / "hooks" / "fsync_stall"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.maildir_only  # the Maildir file's and directory's fsyncs
def test_250_comes_after_both_fsyncs_and_input_during_the_wait_is_answered_after_it(
        make_daemon, tmp_path):
    """
    Every fsync stalls (the test hook), numbered: the message file's, then
    new/'s.  The 250 must come after both ended; a command sent while they
    stall (not pipelined with the dot: it arrives during the wait) is held and
    answered after the 250, in order.
    """
    stall = tmp_path / "stall"
    stall.mkdir()
    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw"}, env={
        "NETSUITE_TEST_FSYNC_STALL": str(stall),
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT), str(ROOT / "examples")])})
    raw = open_data(d)
    (stall / "armed").touch()
    raw.send(b"Subject: stalled-1\r\n\r\nbody\r\n.\r\n")
    assert d.wait_for(lambda: (stall / "start-1").exists(), 10)
    raw.send(b"NOOP\r\nMAIL FROM:<y@remote.test>\r\n")
    code, text = raw.reply()
    assert code == 250 and b"queued as" in text, (code, text)
    assert (stall / "done-1").exists() and (stall / "done-2").exists(), \
        "250 before the message and its directory entry were fsynced"
    assert raw.reply() == (250, b"2.0.0 Ok")
    assert raw.reply()[0] == 250
    raw.close()
    assert len(stored_with(d, b"stalled-1")) == 1
