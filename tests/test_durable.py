"""Group-committed directory fsyncs: shared, yet never returning before a covering fsync."""

from __future__ import annotations

import os
import threading
import time

from netsuite import durable


def test_concurrent_callers_share_fsyncs_and_each_is_covered(tmp_path, monkeypatch):
    real_fsync = os.fsync
    log: list[tuple[str, float]] = []      # ("start"|"end", time) of every directory fsync
    lock = threading.Lock()

    def slow_fsync(fd):
        with lock:
            log.append(("start", time.monotonic()))
        time.sleep(0.05)
        real_fsync(fd)
        with lock:
            log.append(("end", time.monotonic()))

    monkeypatch.setattr(durable.os, "fsync", slow_fsync)
    called: dict[int, tuple[float, float]] = {}

    def caller(i: int) -> None:
        (tmp_path / f"f{i}").write_bytes(b"x")   # the caller's "rename"
        begin = time.monotonic()
        durable.fsync_dir(tmp_path)
        called[i] = (begin, time.monotonic())

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = [t for kind, t in log if kind == "start"]
    ends = [t for kind, t in log if kind == "end"]
    assert len(called) == 20
    assert len(starts) <= 4, f"{len(starts)} fsyncs for 20 concurrent callers"
    for begin, returned in called.values():
        # Some fsync started after this caller asked and finished before it returned.
        assert any(s >= begin and e <= returned for s, e in zip(starts, ends, strict=True))


def test_a_later_caller_gets_its_own_fsync(tmp_path, monkeypatch):
    count = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (count.append(1), real_fsync(fd)))
    durable.fsync_dir(tmp_path)
    durable.fsync_dir(tmp_path)
    assert len(count) == 2
