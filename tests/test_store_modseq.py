"""MODSEQ per message and HIGHESTMODSEQ per folder (the store side of RFC 7162)."""

from __future__ import annotations

import os

from netsuite.store.folder import Folder


def _state(f: Folder):
    return f.highest_modseq, [(m.uid, m.modseq) for m in f.messages]


def test_every_change_takes_the_next_modseq_and_it_survives_restarts(tmp_path):
    box = tmp_path / "box"
    f = Folder(box)
    assert f.highest_modseq == 0
    one = f.append(b"Subject: 1\n\n")
    two = f.append(b"Subject: 2\n\n")
    assert _state(f) == (2, [(one, 1), (two, 2)])
    f.set_flags([f.by_uid(one)], ["\\Seen"], 1)
    assert _state(f) == (3, [(one, 3), (two, 2)])
    # No change, no new MODSEQ.
    assert f.set_flags([f.by_uid(one)], ["\\Seen"], 1) == []
    assert f.highest_modseq == 3
    f.set_flags([f.by_uid(two)], ["$Work"], 1)  # a keyword counts too
    assert _state(f) == (4, [(one, 3), (two, 4)])
    three = f.append(b"Subject: 3\n\n")
    f.expunge([two])
    assert _state(f) == (6, [(one, 3), (three, 5)])
    # Another program (mutt) renames a file adding a flag: seen at the next refresh.
    msg = f.by_uid(three)
    os.rename(f.file_path(msg), f.path / "cur" / f"{msg.base}:2,F")
    f._unsure = True  # the rename may fall in the same mtime tick
    f.refresh()
    assert _state(f) == (7, [(one, 3), (three, 7)])
    # Another process reads the same numbers from the log; a restart too, and
    # after a compaction from the index.
    assert _state(Folder(box)) == _state(f)
    f.compact()
    assert _state(Folder(box)) == _state(f)
    # The next change after a restart goes on from there.
    again = Folder(box)
    again.set_flags([again.by_uid(one)], ["\\Flagged"], 1)
    assert again.by_uid(one).modseq == again.highest_modseq == 8


def test_two_folder_objects_share_one_modseq_sequence(tmp_path):
    a, b = Folder(tmp_path / "box"), Folder(tmp_path / "box")
    uid = a.append(b"Subject: x\n\n")
    b.refresh()
    b.set_flags([b.by_uid(uid)], ["\\Seen"], 1)
    a.set_flags([a.by_uid(uid)], ["\\Answered"], 1)
    b.refresh()
    assert a.highest_modseq == b.highest_modseq == 3
    assert a.by_uid(uid).modseq == b.by_uid(uid).modseq == 3


def test_folder_and_message_provide_the_store_interfaces(tmp_path):
    from zope.interface.verify import verifyObject

    from netsuite.store import IMailFolder, IMessage

    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\n")
    assert verifyObject(IMailFolder, f)
    assert verifyObject(IMessage, f.by_uid(uid))
    assert f.uids == [uid] and f.uids == [m.uid for m in f.messages]
