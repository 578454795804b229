"""
Real FTP clients against the real daemon: curl (passive, active with
--ftp-port, EPRT and PORT, explicit and implicit FTPS, resume) and lftp
(mirror of a tree both ways, plain and over TLS).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Daemon

pytestmark = pytest.mark.skipif(not shutil.which("curl") or not shutil.which("lftp"),
                                reason="curl and lftp are needed")

PW = "s3cret-pw"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("ftpclients"), config={
        "ftp": {"require_tls": False, "anonymous_root": "pub",
                "max_connections_per_address": 40},
    }, listeners=["ftp", "ftps"])
    d.add_user("alice", PW)
    d.start()
    yield d
    d.stop()


def home(d: Daemon) -> Path:
    return d.data_dir / "ftp" / "alice"


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True,
                       timeout=90)
    if check and r.returncode != 0:
        raise AssertionError(f"curl {' '.join(args)} -> {r.returncode}: {r.stderr!r}")
    return r


def url(d: Daemon, path: str = "", listener: str = "ftp", scheme: str = "ftp") -> str:
    return f"{scheme}://alice:{PW}@127.0.0.1:{d.port(listener)}/{path}"


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    return p, data


@pytest.mark.parametrize("mode", [[], ["--ftp-port", "127.0.0.1"],
                                  ["--ftp-port", "127.0.0.1", "--disable-eprt"],
                                  ["--disable-epsv"]],
                         ids=["epsv", "eprt", "port", "pasv"])
def test_curl_modes(daemon, tmp_path, blob, mode):
    path, data = blob
    name = f"curl-{len(mode)}-{'-'.join(mode)}.bin".replace("/", "")
    curl(*mode, "-T", str(path), url(daemon, name))
    assert (home(daemon) / name).read_bytes() == data
    out = tmp_path / "down.bin"
    curl(*mode, "-o", str(out), url(daemon, name))
    assert out.read_bytes() == data
    listing = curl(*mode, url(daemon)).stdout.decode()
    assert name in listing and listing.splitlines()[0][:1] in "-d"
    names = curl(*mode, "-l", url(daemon)).stdout.decode().split()
    assert name in names


def test_curl_explicit_tls_many_uploads(daemon, tmp_path, blob):
    """Every upload over AUTH TLS + PROT P arrives whole, ten times over."""
    path, data = blob
    for i in range(10):
        curl("-k", "--ssl-reqd", "-T", str(path), url(daemon, f"tls-{i}.bin"))
        assert (home(daemon) / f"tls-{i}.bin").read_bytes() == data, i
    out = tmp_path / "tls-down.bin"
    curl("-k", "--ssl-reqd", "-o", str(out), url(daemon, "tls-3.bin"))
    assert out.read_bytes() == data
    # (Active mode over TLS is covered with ftplib and lftp: curl 7.88 never
    # starts the TLS handshake on an accepted data connection.)


def test_curl_implicit_ftps(daemon, tmp_path, blob):
    path, data = blob
    curl("-k", "-T", str(path), url(daemon, "implicit.bin", "ftps", "ftps"))
    assert (home(daemon) / "implicit.bin").read_bytes() == data
    out = tmp_path / "implicit-down.bin"
    curl("-k", "-o", str(out), url(daemon, "implicit.bin", "ftps", "ftps"))
    assert out.read_bytes() == data


def test_curl_resume_both_ways(daemon, tmp_path, blob):
    path, data = blob
    (home(daemon) / "resume.bin").write_bytes(data)
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data[:1_000_000])
    curl("-C", "-", "-o", str(partial), url(daemon, "resume.bin"))
    assert partial.read_bytes() == data
    (home(daemon) / "up-resume.bin").write_bytes(data[:777_777])
    curl("-C", "-", "-T", str(path), url(daemon, "up-resume.bin"))
    assert (home(daemon) / "up-resume.bin").read_bytes() == data


def test_curl_anonymous_and_bad_password(daemon, tmp_path):
    (daemon.data_dir / "pub" / "notes.txt").write_bytes(b"public notes\n")
    r = curl(f"ftp://127.0.0.1:{daemon.port('ftp')}/notes.txt")
    assert r.stdout == b"public notes\n"
    r = curl("-T", "/dev/null", f"ftp://127.0.0.1:{daemon.port('ftp')}/upload.txt", check=False)
    assert r.returncode != 0
    r = curl(f"ftp://alice:wrong@127.0.0.1:{daemon.port('ftp')}/", check=False)
    assert r.returncode == 67  # CURLE_LOGIN_DENIED


def make_tree(base: Path) -> None:
    (base / "a" / "b" / "c").mkdir(parents=True)
    (base / "empty-dir").mkdir()
    (base / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (base / "a" / "one.txt").write_text("one\n")
    (base / "top.txt").write_text("top\n")
    (base / "zero").write_bytes(b"")
    (base / "ünï cødé ✓.txt").write_text("utf-8 name\n")
    (base / "with space.dat").write_bytes(os.urandom(70_000))


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def lftp(d: Daemon, commands: str, tls: bool, implicit: bool = False, passive: bool = True):
    settings = "set net:max-retries 1; set net:reconnect-interval-base 1; " \
               "set cmd:fail-exit yes; "
    if not passive:
        settings += "set ftp:passive-mode false; set ftp:port-range 20000-60000; "
    if tls:
        settings += ("set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                     "set ssl:verify-certificate no; ")
    else:
        settings += "set ftp:ssl-allow false; "
    where = (f"ftps://127.0.0.1:{d.port('ftps')}" if implicit
             else f"ftp://127.0.0.1:{d.port('ftp')}")
    script = f"{settings}open -u alice,{PW} {where}; {commands}; bye"
    r = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("tls,implicit,passive", [
    (False, False, True), (False, False, False), (True, False, True), (True, False, False),
    (True, True, True)], ids=["plain", "plain-active", "auth-tls", "auth-tls-active",
                              "implicit"])
def test_lftp_mirror_both_ways(daemon, tmp_path, tls, implicit, passive):
    src = tmp_path / "src"
    make_tree(src)
    remote = f"mirror-{tls}-{implicit}-{passive}"
    lftp(daemon, f"mirror -R {src} {remote}", tls, implicit, passive)
    assert same_tree(src, home(daemon) / remote)
    back = tmp_path / "back"
    lftp(daemon, f"mirror {remote} {back}", tls, implicit, passive)
    assert same_tree(src, back)
    # Mirror again: nothing changes and nothing fails.
    lftp(daemon, f"mirror -R --only-newer {src} {remote}", tls, implicit, passive)
    assert same_tree(src, home(daemon) / remote)
