"""The change log beside the index: O(1) records, torn tails, crashes during compaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netsuite.store import changelog
from netsuite.store.folder import INDEX_NAME, LOG_NAME, Folder

ROOT = Path(__file__).resolve().parent.parent


def test_a_flag_change_appends_one_record_and_rewrites_nothing(tmp_path, monkeypatch):
    f = Folder(tmp_path / "box")
    uids = [f.append(b"Subject: %d\n\n" % i) for i in range(50)]
    index = f.index_path.stat()
    log_size = f.log_path.stat().st_size
    fsyncs = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    f.set_flags([f.by_uid(uids[7])], ["\\Seen", "$Work"], 1)
    f.expunge([uids[9]])
    assert f.index_path.stat().st_ino == index.st_ino  # the index was not rewritten
    assert fsyncs == []  # flag changes and expunges are not fsynced
    grown = f.log_path.stat().st_size - log_size
    assert 0 < grown < 200
    # Another process (a new Folder) reads them from the log.
    again = Folder(tmp_path / "box")
    assert again.by_uid(uids[7]).flags == ["\\Seen", "$Work"]
    assert again.by_uid(uids[9]) is None


def test_a_torn_last_record_is_ignored_and_cut_off(tmp_path):
    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\n")
    f.set_flags([f.by_uid(uid)], ["$One"], 1)
    whole = f.log_path.read_bytes()
    # A crash in the middle of the next record: half a line, then a garbled one.
    torn = changelog.encode(["F", str(uid), "cur", f.by_uid(uid).name, "$Two"])
    with open(f.log_path, "ab") as out:
        out.write(torn[: len(torn) // 2])
    again = Folder(tmp_path / "box")
    assert again.by_uid(uid).flags == ["$One"]
    # The next writer cuts the torn tail off before it appends.
    again.set_flags([again.by_uid(uid)], ["$Three"], 1)
    assert f.log_path.read_bytes().startswith(whole)
    third = Folder(tmp_path / "box")
    assert third.by_uid(uid).flags == ["$One", "$Three"]
    # A record whose CRC does not match is not applied either.
    bad = bytearray(changelog.encode(["X", str(uid)]))
    bad[0:8] = b"00000000"
    with open(f.log_path, "ab") as out:
        out.write(bytes(bad))
    assert Folder(tmp_path / "box").by_uid(uid) is not None


def test_the_log_is_compacted_into_the_index(tmp_path):
    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\n")
    for i in range(20):
        f.set_flags([f.by_uid(uid)], [f"$K{i}"], 1)
    before = f.index_path.stat().st_ino
    f.compact()
    assert f.index_path.stat().st_ino != before
    assert f.log_path.stat().st_size == len(changelog.header(f._log_id))
    again = Folder(tmp_path / "box")
    assert again.by_uid(uid).flags == [f"$K{i}" for i in range(20)]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from netsuite.store import folder as folder_module
    from netsuite.store.folder import Folder

    crash_at = int(sys.argv[2])
    f = Folder(sys.argv[1])
    real_replace = os.replace
    calls = [0]

    def replace(src, dst):
        # Only the index's own files count (dovecot-keywords is written by replace too).
        if os.path.basename(dst).startswith("netsuite-index"):
            calls[0] += 1
            if calls[0] == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    def done(uid):
        msg = f.by_uid(uid)
        print(uid, msg.base, " ".join(sorted(msg.flags)), flush=True)

    # Every keyword letter (dovecot-keywords) taken: the keywords below are
    # in the index and its log only, not in file names, so a lost record shows.
    first = f.append(b"Subject: letters\\n\\n")
    f.set_flags([f.by_uid(first)], ["$L%d" % j for j in range(26)], 1)
    done(first)
    os.replace = replace
    for i in range(40):
        uid = f.append(b"Subject: %d\\n\\nbody\\n" % i, ["\\\\Seen"] if i % 2 else [])
        done(uid)
        f.set_flags([f.by_uid(uid)], ["$K%d" % i, "\\\\Flagged"], 1)
        done(uid)
        if i % 3 == 0 and sys.argv[3] == "aside":
            # As in the daemon: written without the lock, put in place under it
            # (with what was logged after the snapshot carried over).
            with f._lock():
                job = f._index_job()
            job.write(True)
            if i % 2 == 0:
                # Logged after the snapshot: carried into the fresh log.
                f.set_flags([f.by_uid(uid)], ["$Meanwhile%d" % i], 1)
                done(uid)
                done(f.append(b"Subject: meanwhile %d\\n\\n" % i, ["\\\\Draft"]))
            f._compacted(None, job)
        elif i % 3 == 0:
            f.compact()  # several renames each: the crash lands inside one
    print("end", flush=True)
""")


@pytest.mark.parametrize("mode", ["locked", "aside"])
@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5, 6, 7, 9, 13, 22])
def test_kill_9_during_compaction_loses_no_uid_and_no_flag(tmp_path, crash_at, mode):
    box = tmp_path / "box"
    validity = Folder(box).uidvalidity
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(box), str(crash_at), mode],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected: dict[int, tuple[str, list[str]]] = {}
    for line in proc.stdout.splitlines():
        uid, base, *flags = line.split(" ")
        expected[int(uid)] = (base, [f for f in flags if f])  # no flags: a trailing ""
    assert expected  # it got somewhere before dying
    after = Folder(box)
    assert after.uidvalidity == validity
    for uid, (base, flags) in expected.items():
        msg = after.by_uid(uid)
        assert msg is not None and msg.base == base, (uid, base)
        assert set(flags) <= set(msg.flags), (uid, flags, msg.flags)
    # No UID is given twice: the next one is above all the dead process gave.
    assert after.append(b"Subject: later\n\n") > max(expected)
    assert len({m.base for m in after.messages}) == len(after.messages)
    assert INDEX_NAME in os.listdir(box) and LOG_NAME in os.listdir(box)


def test_a_growing_log_is_compacted_by_itself(tmp_path, monkeypatch):
    from netsuite.store import folder as folder_module

    monkeypatch.setattr(folder_module, "COMPACT_MIN_BYTES", 2000)
    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\n")
    first = f._log_id
    for i in range(60):
        f.set_flags([f.by_uid(uid)], [f"$K{i}"], 1 if i % 2 == 0 else 0)
    assert f._log_id != first  # compacted on the way, without a reactor
    assert f.log_path.stat().st_size < 2000 + 200
    assert Folder(tmp_path / "box").by_uid(uid).flags == f.by_uid(uid).flags


@pytest.mark.parametrize("who", ["this process", "another process"])
def test_a_compaction_written_aside_carries_over_what_was_logged_meanwhile(tmp_path, who):
    # Folder._compact_in_background in steps, without a reactor: the job is made
    # under the lock, written (a thread, in the daemon) without it, then put in
    # place with the records logged after its snapshot carried into its log.
    f = Folder(tmp_path / "box")
    uids = [f.append(b"Subject: %d\n\n" % i) for i in range(5)]
    with f._lock():
        job = f._index_job()
    job.write(True)
    writer = f if who == "this process" else Folder(tmp_path / "box")
    writer.set_flags([writer.by_uid(uids[1])], ["$Meanwhile", "\\Seen"], 1)
    new = writer.append(b"Subject: meanwhile\n\n")
    writer.expunge([uids[3]])
    f._compacted(None, job)
    # Put in place, not given up: its index, its log (with the records).
    assert f._compact_tries == 0 and not job.tmp.exists() and not job.fresh_log.exists()
    assert f.index_path.stat().st_ino == job.sig[0] and f._log_id == job.log_id
    assert changelog.read_id(f.log_path)[1] > len(changelog.header(job.log_id))
    for reader in (Folder(tmp_path / "box"), writer):
        reader.refresh()
        assert reader.by_uid(uids[1]).flags == ["\\Seen", "$Meanwhile"]
        assert reader.by_uid(new) is not None and reader.by_uid(uids[3]) is None
        assert reader.uids == [*uids[:3], uids[4], new]
    assert sorted(n for n in os.listdir(tmp_path / "box") if n.startswith(INDEX_NAME)) == [
        INDEX_NAME, INDEX_NAME + ".backup", INDEX_NAME + ".lock", LOG_NAME, LOG_NAME + ".2"]


def test_a_compaction_written_aside_is_given_up_if_another_compacted_meanwhile(tmp_path):
    f = Folder(tmp_path / "box")
    uids = [f.append(b"Subject: %d\n\n" % i) for i in range(5)]
    with f._lock():
        job = f._index_job()
    job.write(True)
    other = Folder(tmp_path / "box")
    other.set_flags([other.by_uid(uids[1])], ["$Meanwhile"], 1)
    other.compact()
    theirs = other.index_path.stat().st_ino
    f._compacted(None, job)
    # Given up, its files gone; the other's index stays (no compaction is due).
    assert not job.tmp.exists() and not job.fresh_log.exists()
    assert f._compact_tries == 1 and f.index_path.stat().st_ino == theirs
    assert f.by_uid(uids[1]).flags == ["$Meanwhile"]
    assert Folder(tmp_path / "box").by_uid(uids[1]).flags == ["$Meanwhile"]


def test_a_compaction_written_aside_is_put_in_place_when_nothing_changed(tmp_path):
    f = Folder(tmp_path / "box")
    uid = f.append(b"Subject: x\n\n")
    f.set_flags([f.by_uid(uid)], ["$One"], 1)
    with f._lock():
        job = f._index_job()
    job.write(True)
    f._compacted(None, job)
    assert f.index_path.stat().st_ino == job.sig[0] and f._log_id == job.log_id
    assert f.log_path.stat().st_size == len(changelog.header(job.log_id))
    assert Folder(tmp_path / "box").by_uid(uid).flags == ["$One"]
