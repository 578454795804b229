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


def test_expunged_uids_are_known_with_their_modseq_across_compaction_and_restart(tmp_path):
    box = tmp_path / "box"
    f = Folder(box)
    uids = [f.append(b"Subject: %d\n\n" % n) for n in range(6)]
    # Nothing expunged yet, and no record of how far back: not known (fall back).
    assert f.expunged_since(0) is None
    before = f.highest_modseq
    f.expunge([uids[1], uids[3]])
    middle = f.highest_modseq
    assert f.expunged_since(before) == [uids[1], uids[3]]
    assert f.expunged_since(middle) == []
    assert f.expunged_since(before - 1) is None  # before the record starts
    # Another program removes a file: the next scan records it too.
    os.unlink(f.file_path(f.by_uid(uids[4])))
    f._unsure = True
    f.refresh()
    assert f.expunged_since(middle) == [uids[4]]
    f.compact()  # the change log starts afresh; the record does not
    again = Folder(box)
    assert again.expunged_since(before) == [uids[1], uids[3], uids[4]]
    assert again.expunged_since(middle) == [uids[4]]
    # Another process's folder object sees the same.
    again.expunge([uids[0]])
    assert f.expunged_since(middle) == [uids[0], uids[4]]


def test_the_expunge_record_stays_bounded_and_says_how_far_back_it_knows(tmp_path, monkeypatch):
    from netsuite.store import vanished

    monkeypatch.setattr(vanished, "MAX_BYTES", 200)
    f = Folder(tmp_path / "box")
    uids = [f.append(b"Subject: %d\n\n" % n) for n in range(60)]
    start = f.highest_modseq
    marks = []
    for u in uids:
        f.expunge([u])
        marks.append(f.highest_modseq)
    path = f.path / vanished.NAME
    assert path.stat().st_size <= 200 + 40
    # The newest expunges are still known exactly; the oldest no longer are.
    assert f.expunged_since(marks[-3]) == uids[-2:]
    assert f.expunged_since(start) is None
    known_from = min(m for m in [start] + marks if f.expunged_since(m) is not None)
    n = ([start] + marks).index(known_from)
    assert f.expunged_since(known_from) == uids[n:]
    # A torn tail (a crash mid-write) is ignored and cut by the next writer.
    with open(path, "ab") as out:
        out.write(b"99")
    assert f.expunged_since(marks[-3]) == uids[-2:]
    extra = f.append(b"Subject: x\n\n")
    f.expunge([extra])
    assert f.expunged_since(marks[-1]) == [extra]
