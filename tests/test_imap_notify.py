"""NOTIFY (RFC 5465) against the real daemon: pushes without a command, for other mailboxes too."""

from __future__ import annotations

import imaplib
import socket
import time

import pytest

USERS = {"alice": "wonderland"}


def message(n: int) -> bytes:
    return b"From: bob@example.test\r\nSubject: n%d\r\n\r\nbody\r\n" % n


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"imap": {"allow_plaintext_auth": True}})


class Raw:
    def __init__(self, d):
        self.s = socket.create_connection(("127.0.0.1", d.port("imap")), timeout=10)
        self.buf = b""
        self.n = 0
        self.line()
        self.run(b"LOGIN alice wonderland")

    def line(self, timeout: float = 10.0) -> bytes | None:
        """The next line, or None if none comes within C{timeout}."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except TimeoutError:
                return None
            assert chunk, self.buf
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def run(self, text: bytes) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        self.s.sendall(tag + b" " + text + b"\r\n")
        out = []
        while True:
            line = self.line()
            assert line is not None, out
            out.append(line)
            if line.startswith(tag + b" "):
                return out


def other(d) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    return m


def test_status_of_other_mailboxes_is_pushed_without_a_command(daemon):
    b = other(daemon)
    b.create("Lists")
    b.append("Lists", "", None, message(0))
    a = Raw(daemon)
    a.run(b"SELECT INBOX")
    reply = a.run(b"NOTIFY SET STATUS (MAILBOXES Lists (MessageNew MessageExpunge))")
    assert reply[-1].split()[1] == b"OK", reply
    assert any(r.startswith(b"* STATUS Lists (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ") for r in reply)
    b.append("Lists", "", None, message(1))  # another session, another mailbox
    line = a.line()
    assert line is not None and line.startswith(b"* STATUS Lists (MESSAGES 2 UIDNEXT 3 ")
    b.logout()


def test_selected_mailbox_changes_are_pushed(daemon):
    a = Raw(daemon)
    a.run(b"SELECT INBOX")
    assert a.run(b"NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")[-1] \
        .split()[1] == b"OK"
    assert a.line(timeout=0.5) is None  # nothing happened, nothing said
    b = other(daemon)
    b.append("INBOX", "", None, message(1))
    assert a.line() == b"* 1 EXISTS"
    assert a.line() == b"* 1 RECENT"
    b.select("INBOX")
    b.store("1", "+FLAGS", "(\\Flagged)")
    line = a.line()
    assert line is not None and line.startswith(b"* 1 FETCH (") and b"\\Flagged" in line
    b.logout()


def test_notify_none_stops_and_bad_events_are_refused(daemon):
    a = Raw(daemon)
    reply = a.run(b"NOTIFY SET (PERSONAL (AnnotationChange))")
    assert reply[-1].split()[1] == b"NO" and b"[BADEVENT" in reply[-1], reply
    assert a.run(b"NOTIFY SET (NOWHERE (MessageNew))")[-1].split()[1] == b"BAD"
    assert a.run(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")[-1].split()[1] == b"OK"
    assert a.run(b"NOTIFY NONE")[-1].split()[1] == b"OK"
    b = other(daemon)
    b.append("INBOX", "", None, message(2))
    assert a.line(timeout=1.0) is None
    assert not any(r.startswith(b"* STATUS") for r in a.run(b"NOOP"))
    b.logout()


def test_mailbox_names_and_subscriptions_of_other_sessions_are_pushed(daemon):
    """MailboxName and SubscriptionChange (RFC 5465 5.4, 5.5): untagged LIST, no command."""
    a = Raw(daemon)
    reply = a.run(b"NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))")
    assert reply[-1].split()[1] == b"OK", reply
    b = other(daemon)
    b.create("Proj")
    assert a.line() == b'* LIST (\\HasNoChildren) "." Proj'
    b.create("Proj.Sub")
    assert a.line() == b'* LIST (\\HasNoChildren) "." Proj.Sub'
    b.subscribe("Proj.Sub")
    assert a.line() == b'* LIST (\\HasNoChildren \\Subscribed) "." Proj.Sub'
    b.rename("Proj", "Work")  # the child is renamed too: one LIST each
    assert a.line() == b'* LIST (\\HasChildren) "." Work ("OLDNAME" (Proj))'
    assert a.line() == b'* LIST (\\HasNoChildren \\Subscribed) "." Work.Sub ("OLDNAME" (Proj.Sub))'
    b.unsubscribe("Work.Sub")
    assert a.line() == b'* LIST (\\HasNoChildren) "." Work.Sub'
    b.delete("Work.Sub")
    assert a.line() == b'* LIST (\\NonExistent) "." Work.Sub'
    # The session's own changes are its own replies' business: no LIST for them.
    reply = a.run(b"CREATE Mine")
    assert reply[-1].split()[1] == b"OK" and len(reply) == 1, reply
    b.logout()
    assert a.run(b"NOTIFY NONE")[-1].split()[1] == b"OK"


def test_mailbox_name_events_follow_the_filter(daemon):
    """Only names in the group's mailboxes are told; a command in progress tells them at its end."""
    a = Raw(daemon)
    reply = a.run(b"NOTIFY SET (SUBTREE Lists (MailboxName))")
    assert reply[-1].split()[1] == b"OK", reply
    b = other(daemon)
    b.create("Other")  # not in the subtree: nothing (the next line is about Lists)
    b.subscribe("Other")  # not asked for (SubscriptionChange)
    b.create("Lists")
    assert a.line() == b'* LIST (\\HasNoChildren) "." Lists'
    b.create("Lists.a")
    assert a.line() == b'* LIST (\\HasNoChildren) "." Lists.a'
    b.rename("Other", "Lists.b")  # into the subtree: told (the new name is in it)
    assert a.line() == b'* LIST (\\HasNoChildren \\Subscribed) "." Lists.b ("OLDNAME" (Other))'
    b.logout()


def test_message_new_sends_the_fetch_asked_for(daemon):
    """MessageNew's fetch attributes (RFC 5465 5.2): a FETCH after the EXISTS."""
    a = Raw(daemon)
    a.run(b"SELECT INBOX")
    reply = a.run(b"NOTIFY SET (SELECTED (MessageNew (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
                  b"(SUBJECT)]) MessageExpunge))")
    assert reply[-1].split()[1] == b"OK", reply
    b = other(daemon)
    b.append("INBOX", "", None, message(7))
    assert a.line() == b"* 1 EXISTS"
    assert a.line() == b"* 1 RECENT"
    line = a.line()
    assert line == b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[HEADER.FIELDS (SUBJECT)] {15}" \
        % len(message(7)), line
    assert a.line() == b"Subject: n7"
    assert a.line() == b""
    assert a.line() == b")"
    # Nothing was read: \Seen is not set.
    assert any(b"FLAGS (\\Recent)" in r for r in a.run(b"FETCH 1 FLAGS"))
    b.logout()


def test_message_new_fetch_comes_at_the_end_of_a_command_too(daemon):
    """Mail that came while a command ran: its EXISTS and then its FETCH before the OK."""
    a = Raw(daemon)
    a.run(b"SELECT INBOX")
    reply = a.run(b"NOTIFY SET (SELECTED (MessageNew (UID FLAGS)))")
    assert reply[-1].split()[1] == b"OK", reply
    data = message(8)
    reply = a.run(b"APPEND INBOX {%d+}\r\n" % len(data) + data)  # the session's own command
    assert reply[-1].split()[1] == b"OK", reply
    assert b"* 1 EXISTS" in reply and b"* 1 FETCH (UID 1 FLAGS (\\Recent))" in reply, reply
    assert reply.index(b"* 1 EXISTS") < reply.index(b"* 1 FETCH (UID 1 FLAGS (\\Recent))")
    # Told once: the next command does not repeat it.
    assert not any(b"FETCH" in r for r in a.run(b"NOOP")), reply


def test_mailboxes_created_later_are_watched_and_name_events_bring_no_status(daemon):
    """
    PERSONAL names the mailboxes there are now: one created after NOTIFY is watched too.
    A group asking only for MailboxName gets no (empty) STATUS for new mail.
    """
    a = Raw(daemon)
    reply = a.run(b"NOTIFY SET (PERSONAL (MessageNew))")
    assert reply[-1].split()[1] == b"OK", reply
    b = other(daemon)
    b.create("Fresh")
    b.append("Fresh", "", None, message(1))
    line = a.line()
    assert line is not None and line.startswith(b"* STATUS Fresh (MESSAGES 1 UIDNEXT 2 "), line
    b.rename("Fresh", "Renamed")
    b.append("Renamed", "", None, message(2))
    line = a.line()
    assert line is not None and line.startswith(b"* STATUS Renamed (MESSAGES 2 UIDNEXT 3 "), line
    c = Raw(daemon)
    assert c.run(b"NOTIFY SET (PERSONAL (MailboxName))")[-1].split()[1] == b"OK"
    b.append("INBOX", "", None, message(3))  # nothing asked for that: the LIST comes first
    b.create("Later")
    assert c.line() == b'* LIST (\\HasNoChildren) "." Later'
    b.logout()
