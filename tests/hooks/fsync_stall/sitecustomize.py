"""
Test hook, on the daemon's PYTHONPATH only in tests/test_store_stall.py: once
C{$NETSUITE_TEST_FSYNC_STALL/armed} exists, every os.fsync takes 200 ms more,
and leaves C{start-N} and C{done-N} files in that directory around the stall
so that a test can order replies against it (not time them).  Once
C{armed-rmdir} exists, every os.rmdir does the same; C{armed-rename} and
C{armed-unlink} slow every os.rename and os.unlink by 1 ms (see L{_slowed}).
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

    _real_rmdir = os.rmdir

    def rmdir(path, *args, **kwargs):
        # C{armed-rmdir}: every directory removal stalls too (a DELETE of a big folder).
        if not os.path.exists(os.path.join(_DIR, "armed-rmdir")):
            return _real_rmdir(path, *args, **kwargs)
        with _lock:
            n = next(_count)
        _mark(f"start-{n}")
        time.sleep(0.2)
        try:
            return _real_rmdir(path, *args, **kwargs)
        finally:
            _mark(f"done-{n}")

    os.rmdir = rmdir

    def _slowed(real, name: str):
        """Once C{armed-NAME} exists, every call takes 1 ms more; the first leaves C{slow-NAME}."""
        armed = os.path.join(_DIR, f"armed-{name}")
        seen = os.path.join(_DIR, f"slow-{name}")

        def slow(*args, **kwargs):
            if os.path.exists(armed):
                if not os.path.exists(seen):
                    _mark(f"slow-{name}")
                time.sleep(0.001)
            return real(*args, **kwargs)

        return slow

    # C{armed-rename}, C{armed-unlink}: a STORE or EXPUNGE of many messages, slowed.
    os.rename = _slowed(os.rename, "rename")
    os.unlink = _slowed(os.unlink, "unlink")
