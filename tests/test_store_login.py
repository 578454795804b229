"""A login prepares the user's mailbox once per process, and again only if it vanished."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_imap import USERS, connect

from netsuite.store.maildir import MaildirStore


def test_second_login_makes_no_directories(tmp_path, monkeypatch):
    store = MaildirStore(tmp_path)
    store.ensure_special_folders("alice")
    made = []
    real = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **kw: (made.append(self),
                                                                real(self, *a, **kw)))
    store.ensure_special_folders("alice")
    store.ensure_special_folders("alice")
    assert made == []
    # An admin removes the whole mailbox: the next login makes it again, special folders too.
    shutil.rmtree(tmp_path / "alice")
    store.ensure_special_folders("alice")
    assert made
    assert store.list_folders("alice") == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]


@pytest.mark.maildir_only  # the Maildir removed behind the server
def test_mailbox_removed_between_logins_is_made_again(make_daemon):
    d = make_daemon(listeners=["imaps"], users=USERS)
    m = connect(d)
    m.create("Work")
    m.logout()
    shutil.rmtree(d.maildir("alice"))
    m = connect(d)
    typ, listing = m.list()
    assert typ == "OK"
    names = sorted(line.rsplit(b" ", 1)[-1].strip(b'"') for line in listing)
    assert names == [b"Drafts", b"INBOX", b"Junk", b"Sent", b"Trash"]
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"0"]
    assert m.append("INBOX", None, None, b"Subject: back\r\n\r\nhi\r\n")[0] == "OK"
    m.logout()
    assert (d.maildir("alice") / ".Sent" / "cur").is_dir()
