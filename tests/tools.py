"""Real client programs from Debian: required in CI, skipped with a reason on a bare laptop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def account_files_locked() -> Iterator[None]:
    """
    Serialise useradd/chpasswd/userdel between test processes (pytest-xdist
    workers): shadow-utils refuse with "cannot lock /etc/passwd" rather than wait.
    """
    with open(Path(tempfile.gettempdir()) / "netsuite-tests-accounts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def system_account(name: str, password: str, *useradd: str) -> Iterator[str]:
    """
    A throwaway system account (root only; in CI its absence fails), removed
    afterwards with its home directory if C{useradd} asked for one.
    """
    if os.geteuid() != 0 or not shutil.which("useradd"):
        message = "needs root and useradd to create a throwaway system account"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root with useradd: {message}")
        pytest.skip(message)
    with account_files_locked():
        subprocess.run(["useradd", "--shell", "/bin/sh", *useradd, name], check=True,
                       capture_output=True)
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                       capture_output=True)
    try:
        yield name
    finally:
        with account_files_locked():
            subprocess.run(["userdel", "--remove", name], capture_output=True)
