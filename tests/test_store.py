"""The Maildir++ store and its per-folder index (no daemon: pure store API)."""

from __future__ import annotations

import os

import pytest

from netsuite.store.folder import INDEX_NAME, Folder, to_wire, wire_size
from netsuite.store.maildir import BadFolderName, MaildirStore


def deliver(store: MaildirStore, user: str, data: bytes) -> str:
    """Synchronous delivery through the same class SMTP uses (its _finish step)."""
    d = store.delivery(user)
    d.write(data)
    return d._finish()


@pytest.fixture
def store(tmp_path):
    return MaildirStore(tmp_path / "mail")


def test_uids_assigned_in_arrival_order_and_persist(store, tmp_path):
    for i in range(3):
        deliver(store, "alice", b"Subject: %d\n\nbody\n" % i)
    f = store.folder("alice")
    assert [m.uid for m in f.messages] == [1, 2, 3]
    assert f.next_uid == 4
    validity = f.uidvalidity
    # A fresh store (a restarted server) reads the same UIDs from the index.
    again = MaildirStore(tmp_path / "mail").folder("alice")
    assert again.uidvalidity == validity
    assert [(m.uid, m.base) for m in again.messages] == [(m.uid, m.base) for m in f.messages]


def test_wire_size_counts_crlf(store):
    deliver(store, "alice", b"Subject: x\n\nline1\nline2\n")
    f = store.folder("alice")
    msg = f.messages[0]
    assert msg.size == -1  # a first open does not read message files
    assert f.size_of(msg) == len(b"Subject: x\r\n\r\nline1\r\nline2\r\n")
    # The computed size is kept in the index (written at the next refresh).
    f.refresh()
    assert MaildirStore(f.path.parent).folder("alice").messages[0].size == f.size_of(msg)
    assert to_wire(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert wire_size(b"a\nb\r\n") == 6


def test_flags_live_in_file_names(store, tmp_path):
    deliver(store, "alice", b"Subject: x\n\n")
    f = store.folder("alice")
    msg = f.messages[0]
    changed = f.set_flags([msg], ["\\Seen", "\\Flagged", "$Label1"], 1)
    assert changed == [msg]
    names = os.listdir(tmp_path / "mail" / "alice" / "cur")
    # Keywords too, as Dovecot's letters (see store.keywords).
    assert len(names) == 1 and names[0].endswith(":2,FSa")
    assert msg.flags == ["\\Flagged", "\\Seen", "$Label1"]
    f.set_flags([msg], ["\\Flagged"], -1)
    assert os.listdir(tmp_path / "mail" / "alice" / "cur")[0].endswith(":2,Sa")
    # Keywords survive a restart through the index.
    again = MaildirStore(tmp_path / "mail").folder("alice")
    assert again.messages[0].flags == ["\\Seen", "$Label1"]


def test_rename_by_another_program_is_seen_as_flag_change(store, tmp_path):
    deliver(store, "alice", b"Subject: x\n\n")
    f = store.folder("alice")
    seen = []
    f.listeners.append(lambda folder, ch: seen.append(ch))
    root = tmp_path / "mail" / "alice"
    name = os.listdir(root / "new")[0]
    os.rename(root / "new" / name, root / "cur" / f"{name}:2,RS")
    changes = f.refresh()
    assert changes.flags and changes.flags[0].uid == 1
    assert f.messages[0].flags == ["\\Answered", "\\Seen"]
    assert seen and seen[0].flags


def test_external_delete_and_new_file(store, tmp_path):
    deliver(store, "alice", b"one\n")
    deliver(store, "alice", b"two\n")
    f = store.folder("alice")
    root = tmp_path / "mail" / "alice"
    first = f.file_path(f.messages[0])
    first.unlink()
    (root / "cur" / "1700000000.M1P1.otherhost:2,S").write_bytes(b"three\n")
    changes = f.refresh()
    assert changes.expunged == [1]
    assert [m.uid for m in changes.added] == [3]
    assert [m.uid for m in f.messages] == [2, 3]


def test_unchanged_folder_refresh_does_not_list(store, monkeypatch):
    deliver(store, "alice", b"x\n")
    f = store.folder("alice")
    f._unsure = False
    f._mtimes = f._dir_mtimes()

    def boom(path):
        raise AssertionError("listdir called on an unchanged folder")

    monkeypatch.setattr(os, "listdir", boom)
    assert not f.refresh()


def test_corrupt_index_is_recovered_with_the_same_uids(store, tmp_path):
    deliver(store, "alice", b"x\n")
    f = store.folder("alice")
    f.set_flags(f.messages, ["\\Seen", "$Kept"], 1)
    f.compact()
    deliver(store, "alice", b"y\n")
    f.refresh()
    f.set_flags([f.by_uid(2)], ["$Later"], 1)
    old = f.uidvalidity
    index = tmp_path / "mail" / "alice" / INDEX_NAME
    index.write_text("garbage\n")
    again = Folder(tmp_path / "mail" / "alice", clock=lambda: old + 5)
    assert again.uidvalidity == old
    assert [(m.uid, m.base) for m in again.messages] == [(m.uid, m.base) for m in f.messages]
    assert again.by_uid(1).flags == ["\\Seen", "$Kept"]
    assert again.by_uid(2).flags == ["$Later"]
    assert index.read_text().startswith("netsuite-index 1 ")
    # A truncated index (no final newline) is recovered too.
    index.write_text(index.read_text()[:-3])
    third = Folder(tmp_path / "mail" / "alice", clock=lambda: old + 10)
    assert third.uidvalidity == old and [m.uid for m in third.messages] == [1, 2]


def test_corrupt_index_without_backup_is_rebuilt_with_new_uidvalidity(store, tmp_path):
    deliver(store, "alice", b"x\n")
    f = store.folder("alice")
    old = f.uidvalidity
    box = tmp_path / "mail" / "alice"
    (box / INDEX_NAME).write_text("garbage\n")
    (box / "netsuite-index.backup").unlink()
    again = Folder(box, clock=lambda: old + 5)
    assert again.uidvalidity > old
    assert [m.uid for m in again.messages] == [1]


def test_missing_index_rebuilt(store, tmp_path):
    deliver(store, "alice", b"x\n")
    store.folder("alice")
    (tmp_path / "mail" / "alice" / INDEX_NAME).unlink()
    f = Folder(tmp_path / "mail" / "alice")
    assert len(f.messages) == 1


def test_append_expunge_copy(store, tmp_path):
    store.ensure_special_folders("alice")
    inbox = store.folder("alice")
    uid = inbox.append(b"Subject: a\r\n\r\nhi\r\n", ["\\Seen"], date=1_600_000_000)
    msg = inbox.by_uid(uid)
    assert msg.date == 1_600_000_000 and msg.has("\\Seen")
    assert inbox.read(msg) == b"Subject: a\n\nhi\n"
    assert inbox.read_wire(msg) == b"Subject: a\r\n\r\nhi\r\n"
    trash = store.folder("alice", "Trash")
    pairs = inbox.copy_to([msg], trash)
    assert pairs == [(uid, 1)]
    assert trash.by_uid(1).has("\\Seen")
    assert inbox.expunge([uid]) == [uid]
    assert inbox.messages == []
    assert len(os.listdir(tmp_path / "mail" / "alice" / ".Trash" / "cur")) == 1


def test_folders_create_rename_delete(store):
    store.ensure_special_folders("alice")
    assert store.list_folders("alice") == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    store.create_folder("alice", "Work")
    store.create_folder("alice", "Work.2024")
    with pytest.raises(FileExistsError):
        store.create_folder("alice", "Work")
    store.rename_folder("alice", "Work", "Job")
    assert "Job" in store.list_folders("alice") and "Job.2024" in store.list_folders("alice")
    store.delete_folder("alice", "Job.2024")
    assert "Job.2024" not in store.list_folders("alice")
    for bad in ("", "a..b", ".x", "a/b", "x\x00", "a.", "*"):
        with pytest.raises(BadFolderName):
            store.folder_path("alice", bad)
    # Deleted special folders are not recreated on the next login.
    store.delete_folder("alice", "Junk")
    store.ensure_special_folders("alice")
    assert "Junk" not in store.list_folders("alice")


def test_rename_inbox_moves_messages(store):
    deliver(store, "alice", b"x\n")
    store.rename_folder("alice", "INBOX", "Old")
    assert store.folder("alice").messages == []
    assert len(store.folder("alice", "Old").messages) == 1


def test_recent_claimed_once(store):
    deliver(store, "alice", b"x\n")
    f = store.folder("alice")
    assert f.claim_recent() == {1}
    assert f.claim_recent() == set()


def test_delivery_notifies_open_folder(store):
    f = store.folder("alice")
    seen = []
    f.listeners.append(lambda folder, ch: seen.append([m.uid for m in ch.added]))
    d = store.delivery("alice")
    d.write(b"x\n")
    d._finish()
    d.on_commit()
    assert seen == [[1]]


def test_recreated_folder_gets_a_new_uidvalidity(store):
    store.create_folder("alice", "Box")
    first = store.folder("alice", "Box").uidvalidity
    store.delete_folder("alice", "Box")
    store.create_folder("alice", "Box")
    assert store.folder("alice", "Box").uidvalidity > first


def test_subscriptions_follow_rename(store):
    store.create_folder("alice", "A")
    store.create_folder("alice", "A.B")
    store.set_subscribed("alice", "A.B", True)
    store.rename_folder("alice", "A", "C")
    assert store.subscriptions("alice") == ["C.B"]


def test_flag_and_expunge_changes_survive_a_crash_before_the_index_is_written(store, tmp_path):
    for i in range(3):
        deliver(store, "alice", b"m%d\n" % i)
    f = store.folder("alice")
    f.set_flags([f.messages[0]], ["\\Seen", "\\Answered"], 1)
    f.expunge([2])
    # No save happened (the names on disk carry it); a new process sees the truth.
    again = MaildirStore(tmp_path / "mail").folder("alice")
    assert [m.uid for m in again.messages] == [1, 3]
    assert again.messages[0].flags == ["\\Answered", "\\Seen"]
    assert again.next_uid == 4
    # Keywords live only in the index: they are written at once.
    f.set_flags([f.messages[1]], ["$Work"], 1)
    assert MaildirStore(tmp_path / "mail").folder("alice").by_uid(3).keywords == ("$Work",)
    store.flush()
    assert not f._dirty


def test_store_provides_its_interface(store):
    from zope.interface.verify import verifyObject

    from netsuite.store import IMailStore

    assert verifyObject(IMailStore, store)


def test_odd_file_names_are_skipped(store, tmp_path):
    deliver(store, "alice", b"x\n")
    root = tmp_path / "mail" / "alice"
    (root / "cur" / "bad\tname:2,S").write_bytes(b"y\n")
    (root / "cur" / "bad\nname").write_bytes(b"y\n")
    (root / "cur" / ".hidden").write_bytes(b"y\n")
    f = store.folder("alice")
    f.refresh(force=True)
    assert len(f.messages) == 1
    assert len(MaildirStore(tmp_path / "mail").folder("alice").messages) == 1


def test_append_that_fails_on_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    import netsuite.store.folder as folder_module

    folder = Folder(tmp_path / "box")
    folder.append(b"Subject: one\n\nkept\n")
    names = lambda sub: sorted(os.listdir(folder.path / sub))  # noqa: E731
    before = (names("tmp"), names("cur"), folder.next_uid, len(folder.messages))
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The message file cannot be written.
    monkeypatch.setattr(folder_module.os, "fsync", full)
    with pytest.raises(OSError):
        folder.append(b"Subject: two\n\nlost\n")
    assert (names("tmp"), names("cur"), folder.next_uid, len(folder.messages)) == before
    # The message is written, the index is not: the message goes again, the UID is not spent.
    calls = []

    def index_full(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(folder_module.os, "fsync", index_full)
    monkeypatch.setattr(folder_module, "fsync_dir", lambda path: None)
    with pytest.raises(OSError):
        folder.append(b"Subject: three\n\nlost too\n")
    assert (names("tmp"), names("cur"), folder.next_uid, len(folder.messages)) == before
    assert INDEX_NAME + ".tmp" not in os.listdir(folder.path)
    monkeypatch.undo()
    uid = folder.append(b"Subject: four\n\nstored\n")
    assert uid == before[2]
    assert Folder(tmp_path / "box").by_uid(uid) is not None


def test_a_delete_stopped_half_way_is_no_folder_and_is_cleaned_up(store):
    store.ensure_special_folders("alice")
    store.create_folder("alice", "Big")
    store.folder("alice", "Big").append(b"Subject: x\n\ny\n")
    # A crash between the DELETE's rename and the end of its removal leaves this.
    root = store.mailbox_path("alice")
    os.rename(root / ".Big", root / ".#deleted.1700000000.M1P2Q3.host")
    assert "#deleted.1700000000.M1P2Q3.host" not in store.list_folders("alice")
    store.create_folder("alice", "#deleted.1")  # a user's own name like it stays a folder
    store.clean_tmp()
    assert not (root / ".#deleted.1700000000.M1P2Q3.host").exists()
    assert "#deleted.1" in store.list_folders("alice") and (root / ".#deleted.1").is_dir()
    # And a DELETE without a reactor removes everything at once.
    store.delete_folder("alice", "#deleted.1")
    assert not [n for n in os.listdir(root) if "#deleted" in n]
