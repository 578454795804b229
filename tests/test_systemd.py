"""
systemd integration against the real daemon, tested the way systemd does it:
a notify socket of our own (C{NOTIFY_SOCKET}, reading the sender's pid from
C{SCM_CREDENTIALS} as systemd does), listening sockets passed as descriptor 3
onwards with C{LISTEN_FDS}/C{LISTEN_PID}/C{LISTEN_FDNAMES}, and privileges
dropped after binding when started as root.  Unit tests for the message format
and the watchdog on a fake clock first.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import sys
import time
import uuid
from pathlib import Path

import pytest
from twisted.internet import task

from netsuite import systemd


class NotifySocket:
    """What systemd listens on: a datagram socket that learns each sender's pid."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        #: (sender pid, {key: value}) in arrival order.
        self.messages: list[tuple[int, dict[str, str]]] = []

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except (TimeoutError, BlockingIOError):
            return False
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("3i", payload[:12])
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append((pid, fields))
        return True

    def wait_for(self, predicate, timeout: float = 15.0) -> tuple[int, dict[str, str]]:
        """The first message (seen or arriving within C{timeout}) that C{predicate} accepts."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[seen:]:
                if predicate(message[1]):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message in {timeout}s; got {self.messages}")
            self._receive(min(left, 0.5))

    def drain(self) -> None:
        while self._receive(0.2):
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    sockets: list[NotifySocket] = []

    def make(abstract: bool = False) -> NotifySocket:
        address = (f"@netsuite-test-{uuid.uuid4().hex}" if abstract
                   else str(tmp_path / f"notify-{len(sockets)}"))
        s = NotifySocket(address)
        sockets.append(s)
        return s

    yield make
    for s in sockets:
        s.close()


#: How twistd ends after SIGTERM: by re-raising it; 0 once shutdown is graceful.
STOPPED = (0, -signal.SIGTERM)


# -- the message format and the environment ------------------------------------------------


def test_message_format():
    assert systemd.message(("READY", 1), ("STATUS", "serving smtp 25")) == \
        b"READY=1\nSTATUS=serving smtp 25"
    # A newline in a value would start another assignment (READY=1 smuggled in a status).
    assert systemd.message(("STATUS", "a\nREADY=1")) == b"STATUS=a READY=1"
    with pytest.raises(ValueError):
        systemd.message(("BAD=KEY", 1))


def test_socket_address_path_and_abstract():
    assert systemd.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.socket_address("@sd-notify") == b"\0sd-notify"
    assert systemd.socket_address("") is None
    assert systemd.socket_address("vsock:2:1234") is None


def test_from_environ_reads_and_removes_the_variables():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1234",
           "PATH": "/bin"}
    n = systemd.Notifier.from_environ(env, pid=1234)
    assert env == {"PATH": "/bin"}
    assert n.address == b"\0x" and n.watchdog_usec == 3_000_000
    assert n.watchdog_interval == 1.5


def test_watchdog_of_another_pid_is_not_ours():
    env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "99"}
    n = systemd.Notifier.from_environ(env, pid=1234)
    assert n.address == "/run/n" and n.watchdog_usec is None and not env
    assert systemd.Notifier.from_environ({"WATCHDOG_USEC": "x"}).watchdog_usec is None
    assert not systemd.Notifier.from_environ({}).enabled


def test_without_notify_socket_everything_is_a_no_op():
    n = systemd.Notifier(None, 1_000_000, task.Clock())
    assert not n.ready("x") and not n.stopping() and not n.reloading() and not n.reloaded()
    assert n._watchdog is None


def test_messages_reach_the_socket(notify):
    for abstract in (False, True):
        s = notify(abstract)
        n = systemd.Notifier(systemd.socket_address(s.address), None, task.Clock())
        before = systemd.monotonic_usec()
        assert n.ready("serving imap 143")
        assert n.reloading()
        assert n.reloaded("serving imap 143")
        assert n.stopping()
        s.wait_for(lambda m: "STOPPING" in m)
        got = [m for _pid, m in s.messages]
        assert got[0] == {"READY": "1", "STATUS": "serving imap 143"}
        assert got[1]["RELOADING"] == "1"
        assert before <= int(got[1]["MONOTONIC_USEC"]) <= systemd.monotonic_usec()
        assert got[2] == {"READY": "1", "STATUS": "serving imap 143"}
        assert got[3]["STOPPING"] == "1"
        assert {pid for pid, _m in s.messages} == {os.getpid()}


def test_watchdog_pings_on_the_reactor_clock(notify):
    s = notify()
    clock = task.Clock()
    n = systemd.Notifier(s.address, 200_000, clock)
    n.ready()
    s.wait_for(lambda m: "READY" in m)
    s.wait_for(lambda m: "WATCHDOG" in m)  # the first ping goes with READY
    pings = lambda: sum("WATCHDOG" in m for _p, m in s.messages)  # noqa: E731
    assert pings() == 1
    s.drain()
    assert pings() == 1  # nothing without the clock: the reactor sends them
    for _ in range(3):
        clock.advance(0.1)
    s.wait_for(lambda m: pings() >= 4)
    n.ready()  # a second READY (after a reload) does not start a second loop
    clock.advance(0.1)
    s.drain()
    assert pings() == 5
    n.stop_watchdog()
    clock.advance(1)
    s.drain()
    assert pings() == 5


def test_unreachable_socket_is_logged_once_and_never_raises(tmp_path):
    n = systemd.Notifier(str(tmp_path / "nobody-listens"), None, task.Clock())
    assert not n.ready()
    assert not n.stopping()
    assert n._failing


# -- the real daemon ---------------------------------------------------------------------


def test_ready_once_listening_then_stopping_on_sigterm(make_daemon, notify):
    s = notify()
    d = make_daemon(listeners=["smtp", "imap"], env={"NOTIFY_SOCKET": s.address})
    pid, ready = s.wait_for(lambda m: "READY" in m)
    listening = json.loads((d.data_dir / "run" / "listening.json").read_text())
    assert pid == d.proc.pid == listening["pid"]
    assert ready["READY"] == "1"
    assert f"smtp {d.port('smtp')}" in ready["STATUS"]
    assert f"imap {d.port('imap')}" in ready["STATUS"]
    # Without WATCHDOG_USEC, no pings.
    assert not [m for _p, m in s.messages if "WATCHDOG" in m]
    d.proc.send_signal(signal.SIGTERM)
    pid, stopping = s.wait_for(lambda m: "STOPPING" in m)
    assert pid == d.proc.pid and stopping["STOPPING"] == "1"
    assert d.proc.wait(15) in STOPPED
    s.drain()
    assert sum("READY" in m for _p, m in s.messages) == 1


def test_watchdog_pings_repeatedly_over_an_abstract_socket(make_daemon, notify):
    s = notify(abstract=True)
    d = make_daemon(listeners=["smtp"], env={"NOTIFY_SOCKET": s.address,
                                             "WATCHDOG_USEC": "200000"})
    s.wait_for(lambda m: "READY" in m)
    for n in range(1, 4):
        s.wait_for(lambda m, n=n: sum("WATCHDOG" in x for _p, x in s.messages) >= n)
    assert {pid for pid, m in s.messages if "WATCHDOG" in m} == {d.proc.pid}
    assert d.stop() in STOPPED


def test_workers_the_parent_notifies_and_children_inherit_nothing(make_daemon, notify):
    s = notify()
    env = {"NOTIFY_SOCKET": s.address, "WATCHDOG_USEC": "400000"}
    d = make_daemon(config={"server": {"workers": 2}}, listeners=["smtp", "imap"], env=env)
    pid, ready = s.wait_for(lambda m: "READY" in m)
    assert pid == d.proc.pid and "with 2 workers" in ready["STATUS"]
    info = json.loads((d.data_dir / "run" / "workers.json").read_text())
    assert all(info["ready"].values()) and len(info["workers"]) == 2
    for worker_pid in info["workers"].values():
        names = {entry.split(b"=", 1)[0] for entry in
                 Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")}
        assert not names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID"}
    s.wait_for(lambda m: sum("WATCHDOG" in x for _p, x in s.messages) >= 3)
    d.proc.send_signal(signal.SIGTERM)
    s.wait_for(lambda m: "STOPPING" in m)
    assert d.proc.wait(15) in STOPPED
    s.drain()
    assert {p for p, _m in s.messages} == {pid}
    assert sum("READY" in m for _p, m in s.messages) == 1


# -- socket activation ---------------------------------------------------------------------

#: Exec wrapper doing what systemd does before it starts the service: the passed
#: sockets become descriptors 3, 4, ... and LISTEN_PID is the pid that runs the
#: service (this one: exec keeps it).  argv: FD,FD,... COMMAND...
ACTIVATE = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def listening_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def activation(sockets: list[socket.socket], names: list[str]) -> dict:
    """make_daemon keywords that pass C{sockets} the way systemd does."""
    fds = tuple(s.fileno() for s in sockets)
    return {"pass_fds": fds,
            "wrapper": [sys.executable, "-c", ACTIVATE, ",".join(map(str, fds))],
            "env": {"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": ":".join(names)}}


def deliver_and_read(d, smtp_port: int, imaps_port: int) -> None:
    """SMTP delivers a message to alice; IMAP over implicit TLS reads it back."""
    import imaplib
    import smtplib
    import ssl

    subject = f"activated {uuid.uuid4().hex}"
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=15) as smtp:
        smtp.sendmail("bob@remote.test", ["alice@example.test"],
                      f"From: bob@remote.test\r\nSubject: {subject}\r\n\r\nhello\r\n")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=context, timeout=15)
    try:
        imap.login("alice", "secret")
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and subject.encode() in data[0][1]
    finally:
        imap.logout()


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_passed_sockets(make_daemon, workers):
    smtp_sock, imaps_sock = listening_socket(), listening_socket()
    ports = smtp_sock.getsockname()[1], imaps_sock.getsockname()[1]
    listen = {"smtp": ["systemd:domain=INET:name=smtp"],
              # index= too; the implicit-TLS listener gets TLS from netsuite, as on tcp:
              "imaps": ["systemd:domain=INET:index=1"]}
    d = make_daemon(config={"listen": listen, "server": {"workers": workers}}, listeners=[],
                    users={"alice": "secret"},
                    **activation([smtp_sock, imaps_sock], ["smtp", "imaps"]))
    # Only the daemon holds the sockets now: it, not a leftover of ours, answers.
    smtp_sock.close()
    imaps_sock.close()
    assert (d.port("smtp"), d.port("imaps")) == ports
    deliver_and_read(d, *ports)
    if workers > 1:  # the parent adopted the sockets; the workers see no LISTEN_*
        info = json.loads((d.data_dir / "run" / "workers.json").read_text())
        for worker_pid in info["workers"].values():
            environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
            assert not [e for e in environ if e.startswith(b"LISTEN_")]
    # `netsuite check` reads the same config, with no sockets passed to it.
    assert "systemd:domain=INET:name=smtp" in d.cli("check").stdout


def test_systemd_endpoint_without_the_socket_stops_start_up(make_daemon):
    d = make_daemon(config={"listen": {"imap": ["systemd:domain=INET:name=imap"]}},
                    listeners=[], start=False)
    with pytest.raises(RuntimeError) as e:
        d.start()
    message = str(e.value)
    assert "listen.imap[0]: bad endpoint 'systemd:domain=INET:name=imap': " \
           "no socket name=imap from systemd: no socket was passed" in message
    assert "Traceback" not in message


def test_bad_systemd_endpoints_are_config_errors(tmp_path):
    from netsuite.config import ConfigError, load

    assert load(listen_overrides={"imap": ["systemd:domain=INET6:index=0"]}).listen["imap"] \
        == ["systemd:domain=INET6:index=0"]
    for bad, reason in [("systemd:domain=NOPE:index=0", "domain must be an address family"),
                        ("systemd:domain=INET", "Specify exactly one of descriptor index or name"),
                        ("systemd:domain=INET:index=first", "invalid literal")]:
        path = tmp_path / "n.toml"
        path.write_text(f'[listen]\nimap = ["{bad}"]\n')
        with pytest.raises(ConfigError) as e:
            load(path)
        assert str(e.value).startswith(f"{path}: listen.imap[0]: bad endpoint {bad!r}: ")
        assert reason in str(e.value) and "systemd:domain=INET:name=imap" in str(e.value)


# -- dropping privileges ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root "
                                "(CI runs as root)")


def _blocked(path: Path) -> Path | None:
    """The first ancestor of C{path} that other users cannot traverse."""
    for parent in reversed(path.resolve().parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def readable_for_everyone(scratch: Path) -> list[str]:
    """
    A wrapper that makes this Python installation reachable by an unprivileged
    user when it sits in a directory only root may enter (pyenv in /root, as
    here and in CI): in a private mount namespace, that directory is replaced by
    one with mode 0711 holding bind mounts of just the entries needed.  The
    host is untouched; exec keeps the pid.  Empty when nothing is blocked
    (a system Python in /usr).
    """
    import twisted

    needed = [Path(sys.prefix), Path(os.__file__).parent, Path(twisted.__file__).parent,
              Path(__file__).resolve().parent.parent]
    blocked: dict[Path, set[str]] = {}
    for path in needed:
        top = _blocked(path)
        if top is not None:
            blocked.setdefault(top, set()).add(path.resolve().relative_to(top).parts[0])
    if not blocked:
        return []
    steps = []
    for n, (top, children) in enumerate(sorted(blocked.items())):
        stand_in = scratch / f"stand-in-{n}"
        stand_in.mkdir(mode=0o711)
        stand_in.chmod(0o711)
        for child in sorted(children):
            (stand_in / child).mkdir()
            steps.append(f"mount --bind '{top / child}' '{stand_in / child}'")
        steps.append(f"mount --rbind '{stand_in}' '{top}'")
    script = " && ".join(steps) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@pytest.fixture
def world_dir():
    """A directory the daemon's user can reach (pytest's tmp dirs are root's, mode 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="netsuite-privileges-"))
    path.chmod(0o711)
    daemons: list = []
    yield path, daemons
    for d in daemons:
        d.stop()
    shutil.rmtree(path, ignore_errors=True)


def proc_ids(pid: int) -> dict[str, list[int]]:
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(v) for v in value.split()]
    return ids


def test_identity_lookup():
    import grp
    import pwd

    from netsuite.config import ConfigError, ServerConfig
    from netsuite.privileges import identity

    assert identity(ServerConfig()) is None
    nobody = pwd.getpwnam("nobody")
    by_name = identity(ServerConfig(user="nobody"))
    assert by_name is not None and (by_name.uid, by_name.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert identity(ServerConfig(user=str(nobody.pw_uid))) == by_name
    root_group = grp.getgrgid(0).gr_name
    other = identity(ServerConfig(user="nobody", group=root_group))
    assert other is not None and other.gid == 0 and 0 in other.groups
    with pytest.raises(ConfigError) as e:
        identity(ServerConfig(group=root_group))
    assert e.value.key == "group" and "needs server.user" in e.value.reason


@needs_root
@pytest.mark.parametrize("workers", [1, 2])
def test_runs_as_the_configured_user_after_binding(world_dir, workers):
    import grp
    import pwd

    from harness import Daemon

    base, daemons = world_dir
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    # Port 26 (below 1024) shows the binding happened as root.
    d = Daemon(base / "d", {"server": {"user": "nobody", "workers": workers},
                            "listen": {"smtp": ["tcp:0:interface=127.0.0.1",
                                                "tcp:26:interface=127.0.0.2"]}},
               listeners=["smtp", "imaps"], wrapper=readable_for_everyone(base))
    daemons.append(d)
    d.add_user("alice", "secret")  # as root, as `netsuite user add` would: data/ is root's
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert (f"server.data_dir: {d.data_dir} is not writable by user 'nobody' (it belongs to "
            f"root:root): chown -R nobody:{nogroup} {d.data_dir}") in str(e.value)
    for path in [d.data_dir, *d.data_dir.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    d.start()
    assert d.ports["smtp"][1] == 26
    pids = [d.proc.pid]
    if workers > 1:
        info = json.loads((d.data_dir / "run" / "workers.json").read_text())
        pids += list(info["workers"].values())
    for pid in pids:
        ids = proc_ids(pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4 and ids["Gid"] == [nobody.pw_gid] * 4
        assert 0 not in ids["Groups"]
    deliver_and_read(d, d.port("smtp"), d.port("imaps"))
    created = [p for p in d.data_dir.rglob("*") if p.name != "passwd"]
    assert created and {p.lstat().st_uid for p in created} == {nobody.pw_uid}
    assert "set uid/gid" in d.log()
    assert d.stop() in STOPPED


@needs_root
def test_unknown_user_login_listeners_and_closed_data_dir_stop_start_up(world_dir):
    import pwd

    from harness import Daemon

    base, daemons = world_dir
    d = Daemon(base / "u", {"server": {"user": "no-such-user-here"}}, listeners=["smtp"])
    daemons.append(d)
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert f"netsuite: {d.config_path}: server.user: no such user 'no-such-user-here'" \
        in str(e.value)
    d = Daemon(base / "g", {"server": {"user": "nobody", "group": "no-such-group-here"}},
               listeners=["smtp"])
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "server.group: no such group 'no-such-group-here'" in str(e.value)
    d = Daemon(base / "t", {"server": {"user": "nobody"}}, listeners=["smtp", "telnet", "ssh"])
    daemons.append(d)
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert (f"netsuite: {d.config_path}: server.user: TELNET and SSH sessions start programs "
            "as their own users, which needs root: with listen.telnet, listen.ssh on, leave "
            "server.user unset") in str(e.value)
    assert not (d.data_dir / "run" / "listening.json").exists()
    # twistd's own --uid is the same request as server.user, with the same checks.
    import subprocess

    from harness import twistd

    command = d.command()
    at = command.index("netsuite")
    d.config["server"].pop("user")
    d.write_config()
    result = subprocess.run([*twistd(), "--uid", "nobody", *command[len(twistd()):at],
                             *command[at:]], capture_output=True, text=True, timeout=60,
                            cwd=d.dir, env=dict(os.environ, PYTHONPATH=str(UNITS.parent.parent)))
    assert result.returncode != 0
    assert ("server.user: TELNET and SSH sessions start programs as their own users"
            in result.stdout + result.stderr)
    # A data dir of the user's own, behind a directory closed to it.
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    d = Daemon(closed / "c", {"server": {"user": "nobody"}}, listeners=["smtp"],
               wrapper=readable_for_everyone(base))
    daemons.append(d)
    d.data_dir.mkdir()
    os.chown(d.data_dir, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert (f"server.data_dir: user 'nobody' cannot reach {d.data_dir}: a directory above it "
            "does not let that user through") in str(e.value)


# -- the unit files -----------------------------------------------------------------------

UNITS = Path(__file__).resolve().parent.parent / "etc" / "systemd"


def test_unit_files_verify(tmp_path):
    """systemd-analyze verify: no unknown key, bad value or missing program (drop-in included)."""
    import shutil
    import subprocess

    from harness import twistd

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    shutil.copytree(UNITS, tmp_path / "units")
    units = tmp_path / "units"
    service = units / "netsuite.service"
    text = service.read_text()
    assert "ExecStart=/usr/local/bin/twistd --nodaemon --pidfile= netsuite " in text
    # The program must exist for verify; here it is this interpreter's twistd.
    service.write_text(text.replace("/usr/local/bin/twistd", twistd()[0]))
    assert (units / "netsuite.service.d" / "mail-only.conf").exists()
    result = subprocess.run([analyze, "verify", str(service), str(units / "netsuite.socket")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr
    # verify reports problems in the drop-in too (it is read from beside the unit).
    dropin = units / "netsuite.service.d" / "mail-only.conf"
    dropin.write_text(dropin.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"))
    result = subprocess.run([analyze, "verify", str(service)], capture_output=True, text=True,
                            timeout=60)
    assert "mail-only.conf" in result.stdout + result.stderr


def test_socket_unit_matches_its_listen_example():
    """The [listen] table shown in netsuite.socket loads, one index per ListenStream=."""
    from netsuite.config import load

    text = (UNITS / "netsuite.socket").read_text()
    streams = [line for line in text.splitlines() if line.startswith("ListenStream=")]
    listen: dict[str, list[str]] = {}
    for match in re.finditer(r"^#   (\w+) = (\[.*?\])", text, re.M):  # the indented example
        listen[match[1]] = json.loads(match[2])
    assert {"smtp", "imaps", "lmtp", "ftp"} <= set(listen)
    config = load(listen_overrides=listen)
    indexes = sorted(int(ep.rsplit("index=", 1)[1]) for eps in config.listen.values()
                     for ep in eps if ep.startswith("systemd:"))
    assert indexes == list(range(len(streams))) and len(streams) == 8
