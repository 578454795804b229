"""
SSH and SFTP against the real daemon with Debian's OpenSSH client (C{ssh},
C{sftp}, C{scp}, C{ssh-keyscan}), C{ssh} under pexpect for passwords and ptys.
"""

from __future__ import annotations

import ftplib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pexpect
import pytest
from harness import Daemon

SSH = shutil.which("ssh") or "/usr/bin/ssh"
BASE = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10"]
PROMPT = r"[$#] $"

CONFIG = {
    "server": {"auth": ["passwd"]},
    # The suite runs as root with password-file users: their programs run as root,
    # which netsuite refuses unless permitted (as the telnet tests do).
    "telnet": {"permit_root_login": os.geteuid() == 0, "utmp": False, "hangup_grace": 2.0,
               "fail_delay": 0.05},
    "ssh": {"fail_delay": 0.05},
}


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {"alice": keygen(d / "alice", "alice@laptop"), "other": keygen(d / "other", "other")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, keys):
    d = Daemon(tmp_path_factory.mktemp("ssh"), CONFIG, ["ssh", "telnet", "ftp"],
               fresh_host_keys=True)
    d.add_user("alice", "secret")
    d.add_user("bob", "hunter2")
    d.start()
    d.cli("user", "keys", "add", "alice", str(keys["alice"]) + ".pub")
    yield d
    d.stop()


def key_opts(key: Path) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
            "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
            "-i", str(key)]


def ssh(d: Daemon, key: Path, *command: str, user: str = "alice", extra=(),
        timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([SSH, *BASE, *key_opts(key), *extra, "-p", str(d.port("ssh")),
                           f"{user}@127.0.0.1", *command],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def sftp(d: Daemon, key: Path, commands: list[str], tmp: Path, cwd: Path | None = None
         ) -> subprocess.CompletedProcess:
    batch = tmp / "batch"
    batch.write_text("\n".join(commands) + "\n")
    return subprocess.run(["sftp", *BASE, *key_opts(key), "-P", str(d.port("ssh")),
                           "-b", str(batch), "alice@127.0.0.1"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, cwd=cwd or tmp)


def root(d: Daemon, user: str = "alice") -> Path:
    path = d.data_dir / "ftp" / user
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- host keys ---------------------------------------------------------------------------------


def test_host_keys_generated_private_and_printed(daemon, tmp_path):
    key_dir = daemon.data_dir / "ssh"
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert stat.S_IMODE((key_dir / name).stat().st_mode) == 0o600
    printed = daemon.cli("ssh-hostkeys").stdout
    # What the running server presents, read by the real client.
    scanned = subprocess.run(["ssh-keyscan", "-p", str(daemon.port("ssh")), "-t",
                              "ed25519,rsa", "127.0.0.1"], capture_output=True, text=True,
                             timeout=30).stdout
    (tmp_path / "scan").write_text(scanned)
    fingerprints = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "scan")],
                                  capture_output=True, text=True, check=True).stdout
    served = {line.split()[1] for line in fingerprints.splitlines()}
    assert len(served) == 2
    shown = {line.split()[1] for line in printed.splitlines()}
    assert served == shown
    assert "(ED25519)" in printed and "(RSA)" in printed


def test_host_keys_survive_restart(tmp_path):
    d = Daemon(tmp_path / "d", CONFIG, ["ssh"], fresh_host_keys=True)
    d.start()
    try:
        before = d.cli("ssh-hostkeys").stdout
        d.restart()
        assert d.cli("ssh-hostkeys", "--no-create").stdout == before
    finally:
        d.stop()


# -- passwords ---------------------------------------------------------------------------------


def spawn(d: Daemon, *args: str, **kw) -> pexpect.spawn:
    return pexpect.spawn(SSH, [*BASE, "-o", "PubkeyAuthentication=no",
                               "-o", "PreferredAuthentications=password",
                               "-p", str(d.port("ssh")), *args],
                         timeout=20, encoding="utf-8", codec_errors="replace", **kw)


def test_password_login_runs_command(daemon):
    p = spawn(daemon, "alice@127.0.0.1", "echo", "pw-ok")
    p.expect("assword:")
    p.sendline("secret")
    p.expect(pexpect.EOF)
    p.close()
    assert "pw-ok" in p.before
    assert p.exitstatus == 0


def test_keyboard_interactive_password(daemon):
    p = pexpect.spawn(SSH, [*BASE, "-o", "PubkeyAuthentication=no",
                            "-o", "PreferredAuthentications=keyboard-interactive",
                            "-p", str(daemon.port("ssh")), "alice@127.0.0.1", "echo", "ki-ok"],
                      timeout=20, encoding="utf-8", codec_errors="replace")
    p.expect("Password: ")
    p.sendline("wrong")
    p.expect("Password: ")
    p.sendline("secret")
    p.expect(pexpect.EOF)
    p.close()
    assert "ki-ok" in p.before
    assert p.exitstatus == 0
    assert "login failed: protocol=ssh address=127.0.0.1 user=alice" in daemon.log()


def test_wrong_password_refused(daemon):
    p = spawn(daemon, "-o", "NumberOfPasswordPrompts=2", "bob@127.0.0.1", "echo", "nope")
    for _ in range(2):
        p.expect("assword:")
        p.sendline("wrong")
    p.expect("Permission denied")
    p.expect(pexpect.EOF)
    assert "nope" not in p.before


# -- public keys -------------------------------------------------------------------------------


def test_key_login_command_status_and_stderr(daemon, keys):
    r = ssh(daemon, keys["alice"], "echo hi; echo err >&2; exit 3")
    assert r.stdout == "hi\n"
    assert r.stderr == "err\n"
    assert r.returncode == 3


def test_command_runs_in_the_terminal_avatars_environment(daemon, keys):
    r = ssh(daemon, keys["alice"], 'echo "$USER $HOME"; pwd',
            extra=["-o", "SetEnv=LANG=C.UTF-8 LD_PRELOAD=/x NOT_LISTED=1"])
    user, home = r.stdout.splitlines()[0].split()
    assert user == "alice"
    assert home == str(daemon.data_dir / "home" / "alice")
    assert r.stdout.splitlines()[1] == home
    env = ssh(daemon, keys["alice"], "env",
              extra=["-o", "SetEnv=LANG=C.UTF-8 LD_PRELOAD=/x NOT_LISTED=1"]).stdout
    assert "LANG=C.UTF-8" in env.splitlines()
    assert "LD_PRELOAD" not in env and "NOT_LISTED" not in env


def test_unlisted_key_refused(daemon, keys):
    r = ssh(daemon, keys["other"], "echo", "in")
    assert r.returncode == 255
    assert "in" not in r.stdout
    assert "Permission denied" in r.stderr


def test_user_keys_add_list_del(daemon, keys):
    daemon.cli("user", "keys", "add", "bob", str(keys["other"]) + ".pub")
    listed = daemon.cli("user", "keys", "list", "bob").stdout
    assert "ssh-ed25519 other" in listed
    assert ssh(daemon, keys["other"], "echo", "bob-in", user="bob").stdout == "bob-in\n"
    fingerprint = listed.split()[0]
    daemon.cli("user", "keys", "del", "bob", fingerprint)
    assert daemon.cli("user", "keys", "list", "bob").stdout == ""
    assert ssh(daemon, keys["other"], "echo", "bob-in", user="bob").returncode == 255
    bad = daemon.cli("user", "keys", "add", "bob", 'command="/bin/true" ssh-ed25519 AAAA x',
                     check=False)
    assert bad.returncode != 0


# -- terminal sessions -------------------------------------------------------------------------


def test_interactive_pty_session_with_resize(daemon, keys):
    env = dict(os.environ, TERM="vt220")
    p = pexpect.spawn(SSH, [*BASE, *key_opts(keys["alice"]), "-tt", "-p",
                            str(daemon.port("ssh")), "alice@127.0.0.1"],
                      env=env, dimensions=(24, 80), timeout=20, encoding="utf-8",
                      codec_errors="replace")
    p.expect(PROMPT)
    p.sendline("echo T=$TERM; tty; stty size")
    p.expect(r"T=vt220\r\n")
    p.expect(r"/dev/pts/\d+\r\n")
    p.expect(r"24 80\r\n")
    p.setwinsize(40, 132)
    p.expect(PROMPT)
    # The resize reaches the pty as window-change; ask until the shell sees it.
    for _ in range(50):
        p.sendline("stty size")
        i = p.expect([r"40 132\r\n", r"24 80\r\n"])
        if i == 0:
            break
    else:
        pytest.fail("window-change never reached the pty")
    p.sendline("exit 7")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 7


def test_root_shell_refused_unless_permitted_but_sftp_works(tmp_path, keys):
    if os.geteuid() != 0:
        pytest.skip("needs the server to run as root (programs would run as root)")
    d = Daemon(tmp_path / "d", {**CONFIG, "telnet": {**CONFIG["telnet"],
                                                     "permit_root_login": False}}, ["ssh"])
    d.add_user("alice", "secret")
    d.start()
    try:
        d.cli("user", "keys", "add", "alice", str(keys["alice"]) + ".pub")
        r = ssh(d, keys["alice"], "echo", "rooted")
        assert "rooted" not in r.stdout
        assert r.returncode != 0
        assert "session refused user=alice" in d.log()
        assert "Traceback" not in d.log()
        (root(d) / "f.txt").write_text("x")
        out = sftp(d, keys["alice"], ["ls"], tmp_path)
        assert out.returncode == 0, out.stderr
        assert "f.txt" in out.stdout
    finally:
        d.stop()


# -- SFTP and scp ------------------------------------------------------------------------------


def test_sftp_put_get_ls_rename_rm(daemon, keys, tmp_path):
    local = tmp_path / "up.bin"
    payload = os.urandom(300_000)
    local.write_bytes(payload)
    r = sftp(daemon, keys["alice"], [
        "mkdir dir", "put up.bin dir/up.bin", "ls -l dir", "rename dir/up.bin dir/moved.bin",
        "get dir/moved.bin back.bin", "ls dir"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "up.bin" in r.stdout and "moved.bin" in r.stdout
    assert (tmp_path / "back.bin").read_bytes() == payload
    assert (root(daemon) / "dir" / "moved.bin").read_bytes() == payload
    assert sorted(os.listdir(root(daemon) / "dir")) == ["moved.bin"]
    r = sftp(daemon, keys["alice"], ["rm dir/moved.bin", "rmdir dir"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (root(daemon) / "dir").exists()


def test_sftp_rename_does_not_replace(daemon, keys, tmp_path):
    (root(daemon) / "a.txt").write_text("a")
    (root(daemon) / "b.txt").write_text("b")
    r = sftp(daemon, keys["alice"], ["rename a.txt b.txt"], tmp_path)
    assert r.returncode != 0
    assert (root(daemon) / "b.txt").read_text() == "b"


def test_scp_both_ways(daemon, keys, tmp_path):
    local = tmp_path / "s.txt"
    local.write_text("scp payload\n")
    opts = [*BASE, *key_opts(keys["alice"]), "-P", str(daemon.port("ssh"))]
    up = subprocess.run(["scp", *opts, str(local), "alice@127.0.0.1:scp.txt"],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert (root(daemon) / "scp.txt").read_text() == "scp payload\n"
    down = subprocess.run(["scp", *opts, "alice@127.0.0.1:scp.txt", str(tmp_path / "d.txt")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "d.txt").read_text() == "scp payload\n"


def test_sftp_jail(daemon, keys, tmp_path):
    r = root(daemon)
    outside = daemon.dir / "outside.txt"
    outside.write_text("secret outside")
    (r / "linkout").unlink(missing_ok=True)
    os.symlink(daemon.dir, r / "linkout")
    (r / "fileout").unlink(missing_ok=True)
    os.symlink(outside, r / "fileout")
    res = sftp(daemon, keys["alice"], [
        "cd ..", "pwd", "cd /../..", "pwd", "-get ../outside.txt o1", "-get /../outside.txt o2",
        "-get linkout/outside.txt o3", "-get fileout o4", "-ls linkout",
        "-put /etc/hostname linkout/planted", "-symlink /etc etc2",
        "-get ../../../../etc/hostname o5"], tmp_path)
    assert res.stdout.count("Remote working directory: /\n") == 2, res.stdout
    for name in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / name).exists(), name
    answers = [line for line in res.stdout.splitlines() if not line.startswith("sftp>")]
    assert not any("outside.txt" in line for line in answers), answers
    assert not (daemon.dir / "planted").exists()
    assert not (r / "etc2").exists()


def test_interrupted_upload_leaves_nothing(daemon, keys, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(400 << 20)  # sparse locally, really sent over the wire
    batch = tmp_path / "batch"
    batch.write_text("put big.bin big.bin\n")
    proc = subprocess.Popen(["sftp", *BASE, *key_opts(keys["alice"]), "-P",
                             str(daemon.port("ssh")), "-b", str(batch), "alice@127.0.0.1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    r = root(daemon)
    try:
        def temp_growing():
            return [p for p in r.iterdir() if p.name.startswith(".netsuite-upload-")
                    and p.stat().st_size > 0]
        assert daemon.wait_for(temp_growing, timeout=30), "the upload never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert daemon.wait_for(lambda: not any(p.name.startswith(".netsuite-upload-")
                                           for p in r.iterdir()), timeout=20)
    assert not (r / "big.bin").exists()


# -- the shared throttle -----------------------------------------------------------------------


def test_wrong_passwords_throttled_with_telnet_and_ftp(tmp_path):
    from netsuite.telnet.client import TelnetClient

    d = Daemon(tmp_path / "d", {
        **CONFIG,
        "server": {"auth": ["passwd"], "allow_plaintext_auth": True},
        "throttle": {"free_failures": 10, "lock_after": 3, "lock_seconds": 600,
                     "base_delay": 0.05, "max_delay": 0.1},
        "ftp": {"require_tls": False},
    }, ["ssh", "telnet", "ftp"])
    d.add_user("carol", "right")
    d.start()
    try:
        # One failure over FTP, one over TELNET...
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", d.port("ftp"), timeout=10)
        with pytest.raises(ftplib.error_perm):
            ftp.login("carol", "wrong1")
        ftp.close()
        t = TelnetClient("127.0.0.1", d.port("telnet"))
        t.expect(b"login: ")
        t.sendline("carol")
        t.expect(b"Password: ")
        t.sendline("wrong2")
        t.expect(b"Login incorrect")
        t.close()
        # ...and the third over SSH locks the user everywhere.
        p = spawn(d, "-o", "NumberOfPasswordPrompts=1", "carol@127.0.0.1", "true")
        p.expect("assword:")
        p.sendline("wrong3")
        p.expect(pexpect.EOF)
        assert d.wait_for(lambda: d.log().count("login failed: protocol=ssh") >= 1)
        p = spawn(d, "-o", "NumberOfPasswordPrompts=1", "carol@127.0.0.1", "echo", "got-in")
        p.expect("assword:")
        p.sendline("right")
        p.expect(pexpect.EOF)
        assert "got-in" not in p.before
        assert "login refused, locked: protocol=ssh" in d.log()
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", d.port("ftp"), timeout=10)
        with pytest.raises(ftplib.error_perm):
            ftp.login("carol", "right")
        ftp.close()
    finally:
        d.stop()


# -- algorithms --------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [
    "KexAlgorithms=diffie-hellman-group14-sha1",
    "KexAlgorithms=diffie-hellman-group1-sha1",
    "MACs=hmac-sha1",
    "Ciphers=aes128-cbc",
    "HostKeyAlgorithms=ssh-rsa",
])
def test_weak_algorithms_refused(daemon, keys, option):
    r = ssh(daemon, keys["alice"], "echo", "weak", extra=["-v", "-o", option])
    assert r.returncode == 255
    assert "weak" not in r.stdout
    assert "no matching" in r.stderr.lower() or "unable to negotiate" in r.stderr.lower()


def test_default_negotiation_is_modern(daemon, keys):
    r = ssh(daemon, keys["alice"], "true", extra=["-v"])
    assert r.returncode == 0, r.stderr
    assert "kex: algorithm: curve25519-sha256" in r.stderr
    assert "host key algorithm: ssh-ed25519" in r.stderr


def test_algorithms_configurable_and_checked(tmp_path, keys):
    d = Daemon(tmp_path / "d", {**CONFIG, "ssh": {**CONFIG["ssh"], "macs": ["hmac-sha2-256"]}},
               ["ssh"])
    d.add_user("alice", "secret")
    d.start()
    try:
        d.cli("user", "keys", "add", "alice", str(keys["alice"]) + ".pub")
        assert ssh(d, keys["alice"], "true", extra=["-o", "MACs=hmac-sha2-512"]).returncode == 255
        assert ssh(d, keys["alice"], "true", extra=["-o", "MACs=hmac-sha2-256"]).returncode == 0
        d.config["ssh"]["macs"] = ["hmac-md6"]
        bad = d.cli("check", check=False)
        assert bad.returncode == 2
        assert "ssh.macs[0]" in bad.stderr
    finally:
        d.stop()


# -- the transport's first packets -------------------------------------------------------------


def _closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server closes (EOF or reset) within C{timeout}."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_garbage_first_packets(daemon, keys):
    rng = random.Random(15)
    port = daemon.port("ssh")
    garbage = [b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 64, b"SSH-1.5-old\r\n",
               b"HELO x\r\n", b"SSH-2.0\xff\xfe\r\n" + bytes(range(256))]
    garbage += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                for _ in range(20)]
    for payload in garbage:
        if payload.startswith(b"SSH-2.0-"):
            continue
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(256).startswith(b"SSH-2.0-netsuite")
            s.sendall(payload)
            assert _closed_by_server(s), payload
    # A proper version line, then junk where the key exchange should be.
    for _ in range(15):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 2000)))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.recv(256)
            s.sendall(b"SSH-2.0-fuzz\r\n" + junk)
            s.settimeout(0.5)
            try:
                s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                pass
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert ssh(daemon, keys["alice"], "echo", "still-serving").stdout == "still-serving\n"
