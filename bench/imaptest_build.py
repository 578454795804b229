"""
Dovecot's imaptest, built once from the steering repository's
C{shared/imaptest/} (C{build.sh}, the tarball, a patch) and cached under
C{~/.cache/netsuite-bench/}; shared by C{bench/imaptest_bench.py} (stress) and
C{tests/test_imaptest.py} (the scripted compliance groups).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from rounds import shared_dir

#: Where Debian's dovecot-dev keeps libdovecot (imaptest links against it).
DOVECOT_LIBS = "/usr/lib/dovecot"


class ImaptestBuildError(RuntimeError):
    """imaptest could not be built: its inputs or Dovecot's headers are missing, or make failed."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netsuite-bench"


def build_inputs() -> Path:
    """C{shared/imaptest}: build.sh, the tarball and the patch."""
    shared = shared_dir()
    if shared is None or not (shared / "imaptest" / "build.sh").exists():
        raise ImaptestBuildError("shared/imaptest/build.sh not found (expected ../shared beside "
                                 "the repository; NETSUITE_SHARED=DIR points elsewhere)")
    return shared / "imaptest"


def build_imaptest(cache: Path) -> Path:
    """
    imaptest's binary, built with shared/imaptest/build.sh into C{cache} the
    first time.  The directory is named after a hash of the build inputs, so a
    new tarball or patch builds afresh instead of using a stale binary.
    """
    src = build_inputs()
    digest = hashlib.sha256()
    for p in sorted(src.iterdir()):
        if p.is_file():
            digest.update(p.name.encode() + b"\0" + p.read_bytes())
    dest = cache / f"imaptest-{digest.hexdigest()[:12]}"
    binary = dest / "src" / "imaptest"
    if os.access(binary, os.X_OK):
        return binary
    if not Path(DOVECOT_LIBS, "dovecot-config").exists():
        raise ImaptestBuildError("dovecot-dev is not installed (imaptest builds against it)")
    cache.mkdir(parents=True, exist_ok=True)
    # Two processes (pytest-xdist workers, a bench beside the tests) may both
    # find no binary: one builds, the other waits for it and uses it.
    with open(cache / "imaptest-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(binary, os.X_OK):
            return binary
        return _build(src, dest, binary, cache)


def _build(src: Path, dest: Path, binary: Path, cache: Path) -> Path:
    """Run build.sh into a scratch directory and move the result to C{dest}."""
    print(f"building imaptest into {dest} ...", flush=True)
    # build.sh writes into its DEST: build in a scratch directory and move it
    # into place whole, so an interrupted build never looks like a cached one.
    scratch = Path(tempfile.mkdtemp(prefix="imaptest-build-", dir=cache))
    try:
        done = subprocess.run(["bash", str(src / "build.sh"), str(scratch / "b")],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise ImaptestBuildError(f"imaptest build failed:\n{done.stdout}{done.stderr}")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(scratch / "b", dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not os.access(binary, os.X_OK):
        raise ImaptestBuildError(f"imaptest build left no {binary}")
    return binary


def is_group(name: str) -> bool:
    """A compliance group's script (not the mbox it APPENDs from)."""
    return not name.endswith(".mbox")


def groups_in_tarball() -> list[str]:
    """
    The compliance groups imaptest's sources hold (the files directly in
    C{src/tests}, mboxes and subdirectories left out), read from the tarball
    without building: test collection needs the names before any build.
    """
    tarballs = sorted(build_inputs().glob("imaptest-*.tar.gz"))
    if len(tarballs) != 1:
        raise ImaptestBuildError(f"expected one imaptest-*.tar.gz in shared/imaptest, "
                                 f"found {[t.name for t in tarballs]}")
    with tarfile.open(tarballs[0]) as tar:
        names = [m.name.split("/src/tests/", 1)[1] for m in tar.getmembers()
                 if m.isfile() and "/src/tests/" in m.name]
    return sorted(n for n in names if "/" not in n and is_group(n))


def groups_in_tree(binary: Path) -> list[str]:
    """The compliance groups beside a built binary (C{src/tests})."""
    tests = binary.parent / "tests"
    return sorted(p.name for p in tests.iterdir() if p.is_file() and is_group(p.name))
