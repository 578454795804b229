"""
SFTP get/put of one big file and N concurrent ssh logins: netsuite's ssh listener
against OpenSSH's sshd + sftp-server, both on loopback, rounds alternating.

Both are driven by the same OpenSSH client (C{sftp -b}, C{ssh ... true}) with an
Ed25519 key; each server negotiates its own default cipher (netsuite: AES-CTR with
HMAC-SHA2, as Twisted 26.10 offers; OpenSSH: chacha20-poly1305), which is what
their users get.  Run as root (sshd needs it); the bench starts and stops both.

    python bench/ssh_bench.py [--size-mib 500] [--logins 50] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon  # noqa: E402
from rounds import alternate, fmt_ratio, free_port, median, median_ratio, wait_port  # noqa: E402

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
CLIENT = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
          "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
          "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no"]


class Target:
    """One server: where to connect, as whom, and where the big file lives remotely."""

    def __init__(self, port: int, user: str, remote_dir: str, local_dir: Path):
        self.port, self.user, self.remote_dir, self.local_dir = port, user, remote_dir, local_dir

    def remote(self, name: str) -> str:
        return f"{self.remote_dir}/{name}" if self.remote_dir else name


def start_netsuite(work: Path, key: Path) -> tuple[Daemon, Target]:
    d = Daemon(work / "netsuite", {
        "server": {"auth": ["passwd"]},
        # Password-file users' programs run as the daemon's user (root here).
        "telnet": {"permit_root_login": os.geteuid() == 0, "utmp": False},
        # 50 logins at once from one address: above [ssh]'s default of 10 (sshd's
        # MaxStartups is raised to match below).
        "limits": {"max_connections_per_address": 1000},
        "ssh": {"max_connections_per_address": 1000},
    }, ["ssh"])
    d.add_user("alice", "bench-pw")
    d.start()
    d.cli("user", "keys", "add", "alice", str(key) + ".pub")
    root = d.data_dir / "ftp" / "alice"
    root.mkdir(parents=True, exist_ok=True)
    return d, Target(d.port("ssh"), "alice", "", root)


def start_sshd(work: Path, key: Path) -> tuple[subprocess.Popen, Target]:
    peer = work / "sshd"
    files = peer / "files"
    files.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(peer / "host_ed25519")], check=True)
    shutil.copy(str(key) + ".pub", peer / "authorized_keys")
    port = free_port()
    conf = peer / "sshd_config"
    conf.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {peer}/host_ed25519
PidFile {peer}/sshd.pid
AuthorizedKeysFile {peer}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 1000
MaxSessions 1000
Subsystem sftp {SFTP_SERVER}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(peer / "sshd.log", "w"), start_new_session=True)
    wait_port(port, proc=proc)
    import pwd
    return proc, Target(port, pwd.getpwuid(os.geteuid()).pw_name, str(files), files)


def sftp(t: Target, key: Path, commands: list[str], cwd: Path) -> float:
    batch = cwd / "batch"
    batch.write_text("\n".join(commands) + "\n")
    start = time.monotonic()
    subprocess.run(["sftp", *CLIENT, "-i", str(key), "-P", str(t.port), "-b", str(batch),
                    f"{t.user}@127.0.0.1"], stdin=subprocess.DEVNULL, cwd=cwd, check=True,
                   capture_output=True, timeout=900)
    return time.monotonic() - start


def logins(t: Target, key: Path, n: int) -> tuple[float, int]:
    """N C{ssh host true} at once: seconds until all are done, and how many failed."""
    start = time.monotonic()
    procs = [subprocess.Popen(["ssh", *CLIENT, "-i", str(key), "-p", str(t.port),
                               f"{t.user}@127.0.0.1", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    failed = sum(1 for p in procs if p.wait(timeout=300) != 0)
    return time.monotonic() - start, failed


def one_round(t: Target, key: Path, big: Path, size: int, n: int, work: Path) -> dict[str, float]:
    local = work / "local"
    local.mkdir(exist_ok=True)
    got = local / "got.bin"
    got.unlink(missing_ok=True)
    (t.local_dir / "up.bin").unlink(missing_ok=True)
    shutil.copy(big, t.local_dir / "big.bin")
    put_s = sftp(t, key, [f"put {big} {t.remote('up.bin')}"], local)
    get_s = sftp(t, key, [f"get {t.remote('big.bin')} {got}"], local)
    if got.stat().st_size != size or (t.local_dir / "up.bin").stat().st_size != size:
        raise RuntimeError("a transfer came out the wrong size")
    secs, failed = logins(t, key, n)
    return {"get MiB/s": size / get_s / 2**20, "put MiB/s": size / put_s / 2**20,
            "logins seconds": secs, "logins failed": failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=500)
    ap.add_argument("--logins", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="8 MiB, 5 logins, one round")
    args = ap.parse_args()
    if args.smoke:
        args.size_mib, args.logins, args.rounds = 8, 5, 1
    for need in (SSHD, SFTP_SERVER, shutil.which("sftp") or "/usr/bin/sftp"):
        if not os.path.exists(need):
            print(f"{need} is missing (Debian: openssh-server, openssh-client)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="sshbench-"))
    key = work / "client"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    size = args.size_mib << 20
    big = work / "big.bin"
    with open(big, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1 << 20))
    daemon, ours = start_netsuite(work, key)
    sshd, theirs = start_sshd(work, key)
    try:
        results = alternate(args.rounds, {
            "netsuite": lambda: one_round(ours, key, big, size, args.logins, work),
            "openssh": lambda: one_round(theirs, key, big, size, args.logins, work),
        }, show=lambda r, name, f: print(f"  round {r + 1} {name:9s} " + "  ".join(
            f"{k} {v:.2f}" for k, v in f.items()), flush=True))
    finally:
        daemon.stop()
        sshd.terminate()
        sshd.wait(15)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.size_mib} MiB file, {args.logins} concurrent logins, {args.rounds} round(s)")
    print(f"{'metric (median of rounds)':32s} {'netsuite':>10s} {'openssh':>10s} {'ratio':>8s}")
    for k in ("get MiB/s", "put MiB/s", "logins seconds", "logins failed"):
        ratio = median_ratio(results["netsuite"], results["openssh"], k)
        print(f"{k:32s} {median(results['netsuite'], k):10.2f} "
              f"{median(results['openssh'], k):10.2f} {fmt_ratio(ratio):>8s}")
    print("(ratio: median of paired netsuite/openssh; for seconds lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
