"""Dovecot's keyword letters (dovecot-keywords) in netsuite's Maildir folders."""

from __future__ import annotations

import os

from netsuite.store.folder import Folder
from netsuite.store.keywords import KeywordLetters, parse


def test_parse_and_assign(tmp_path):
    assert parse("0 $Forwarded\n1 Junk\nbad line\n40 Far\n") == {0: "$Forwarded", 1: "Junk"}
    (tmp_path / "dovecot-keywords").write_text("1 Junk\n")
    kl = KeywordLetters(tmp_path)
    assert kl.keyword("b") == "Junk" and kl.keyword("a") is None
    assert kl.letter("junk") == "b"
    assert kl.letter("Work") is None
    assert kl.letter("Work", create=True) == "a"
    assert (tmp_path / "dovecot-keywords").read_text() == "0 Work\n1 Junk\n"
    for i in range(24):
        assert kl.letter(f"k{i}", create=True) == "cdefghijklmnopqrstuvwxyz"[i]
    assert kl.letter("one-too-many", create=True) is None


def test_folder_writes_and_reads_letters(tmp_path):
    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\nx\n", ["\\Seen", "Junk"])
    msg = f.by_uid(uid)
    assert msg.letters == "Sa"
    f.set_flags([msg], ["$Forwarded"], 1)
    assert msg.letters == "Sab" and msg.keywords == ("Junk", "$Forwarded")
    f.set_flags([msg], ["Junk"], -1)
    assert msg.letters == "Sb" and msg.keywords == ("$Forwarded",)
    # Another program (Dovecot) sets Junk again and drops $Forwarded by renaming.
    os.rename(f.file_path(msg), f.path / "cur" / f"{msg.base}:2,Sa")
    f.refresh(force=True)
    assert msg.keywords == ("Junk",)
    # Copies map keywords with the destination's own letters.
    other = Folder(tmp_path / "other")
    (other.path / "dovecot-keywords").write_text("0 Work\n")
    [(_, new_uid)] = f.copy_to([msg], other)
    assert other.by_uid(new_uid).letters == "Sb"
    assert Folder(other.path).by_uid(new_uid).keywords == ("Junk",)
