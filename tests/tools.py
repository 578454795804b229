"""Real client programs from Debian: required in CI, skipped with a reason on a bare laptop."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def require(program: str) -> str:
    """The program's path; in CI (CI=true) a missing program fails instead of skipping."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (.ci/apt-packages.txt installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def need_file(path: str, package: str) -> None:
    if not os.path.exists(path):
        message = f"{path} is missing (.ci/apt-packages.txt installs {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_imaptest_build() -> None:
    """What building imaptest (bench/imaptest_build.py) needs: Dovecot, its headers, a toolchain."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from rounds import shared_dir

    need_file("/usr/sbin/dovecot", "dovecot-imapd")
    need_file("/usr/lib/dovecot/dovecot-config", "dovecot-dev")
    for program in ("autoconf", "automake", "libtoolize", "make", "cc", "pkg-config"):
        require(program)
    shared = shared_dir()
    if shared is None or not (shared / "imaptest" / "build.sh").exists():
        message = "shared/imaptest/build.sh not found beside the repository"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
