"""
Test hook, on the daemon's PYTHONPATH only in tests/test_store_stall.py: once
C{$NETSUITE_TEST_FSYNC_STALL/armed} exists, every os.fsync takes 200 ms more,
and leaves C{start-N} and C{done-N} files in that directory around the stall
so that a test can order replies against it (not time them).
"""

import itertools
import os
import threading
import time

_DIR = os.environ.get("NETSUITE_TEST_FSYNC_STALL")
if _DIR:
    _real = os.fsync
    _count = itertools.count(1)
    _lock = threading.Lock()

    def _mark(name: str) -> None:
        with open(os.path.join(_DIR, name), "w") as f:
            f.write(threading.current_thread().name)

    def fsync(fd):
        if not os.path.exists(os.path.join(_DIR, "armed")):
            return _real(fd)
        with _lock:
            n = next(_count)
        _mark(f"start-{n}")
        time.sleep(0.2)
        try:
            return _real(fd)
        finally:
            _mark(f"done-{n}")

    os.fsync = fsync
