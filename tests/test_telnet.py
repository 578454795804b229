"""
TELNET against the real daemon: Debian's C{telnet} under pexpect, and a raw
client (L{netsuite.telnet.client}) that does its own negotiation.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import signal
import socket
import time
from pathlib import Path

import pexpect
import pytest
import tools
from harness import Daemon, wait_steady

from netsuite.telnet import wire
from netsuite.telnet.client import TelnetClient

TELNET = "/usr/bin/telnet"
PROMPT = r"[$#] $"

BASE_CONFIG = {
    "server": {"auth": ["passwd"]},
    # The suite runs the server as root with password-file users: programs then run as
    # root, which netsuite refuses unless the config opts in, as these tests do.
    "telnet": {"permit_root_login": os.geteuid() == 0,
               "fail_delay": 0.05, "hangup_grace": 2.0, "utmp": False, "max_connections": 120,
               "max_connections_per_address": 120,
               "env_whitelist": ["LANG", "LC_*", "NETSUITE_TEST_*"]},
}


def config(server: dict | None = None, **telnet) -> dict:
    """BASE_CONFIG with some [telnet] (and [server]) keys changed."""
    return {"server": {**BASE_CONFIG["server"], **(server or {})},
            "telnet": {**BASE_CONFIG["telnet"], **telnet}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("telnet"), BASE_CONFIG, ["telnet", "telnets"])
    d.add_user("alice", "secret")
    d.add_user("bob", "hunter2")
    d.start()
    yield d
    d.stop()


def client(d: Daemon, **kw) -> TelnetClient:
    return TelnetClient("127.0.0.1", d.port(kw.pop("listener", "telnet")), **kw)


def shell(d: Daemon, **kw) -> TelnetClient:
    """A raw client logged in as alice, at a shell prompt."""
    c = client(d, **kw)
    c.login("alice", "secret", PROMPT)
    return c


def run(c: TelnetClient, command: str, timeout: float = 10.0) -> str:
    """Run a shell command; return its output between two markers."""
    c.sendline(f"echo B-E-G; {command}; echo E-N-D")
    c.expect(r"B-E-G\r\n", timeout)  # the echoed command line has "B-E-G;"
    m = c.expect(r"(?s)(.*?)E-N-D\r\n", timeout)
    c.expect(PROMPT, timeout)
    return m.group(1).decode("utf-8", "replace").replace("\r\n", "\n")


def spawn_telnet(d: Daemon, rows: int = 24, cols: int = 80, term: str = "vt220",
                 listener: str = "telnet") -> pexpect.spawn:
    env = dict(os.environ, TERM=term)
    return pexpect.spawn(TELNET, ["127.0.0.1", str(d.port(listener))], env=env,
                         dimensions=(rows, cols), timeout=15, encoding="utf-8",
                         codec_errors="replace")


def telnet_login(p: pexpect.spawn, user: str = "alice", password: str = "secret") -> None:
    p.expect("login: ")
    p.sendline(user)
    p.expect("Password: ")
    p.sendline(password)
    p.expect(PROMPT)


# -- processes and ptys of the daemon ----------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def pty_fds(pid: int) -> list[str]:
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "ptmx" in target or target.startswith("/dev/pts/"):
            found.append(target)
    return found


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def wait_child(parent: int, argv: list[str], timeout: float = 15.0) -> int:
    """The pid of C{parent}'s child once it runs C{argv} (exec done), waiting boundedly."""
    def find():
        return next((pid for pid in children(parent) if cmdline(pid) == argv), None)
    pid = wait_until(find, timeout)
    assert pid, f"{argv} never ran under {parent}: {[cmdline(c) for c in children(parent)]}"
    return pid


def login_shell_pid(p: pexpect.spawn) -> int:
    """The login shell's pid, asked through the real telnet client."""
    p.sendline('echo "pid=$$"')
    p.expect(r"pid=(\d+)")
    pid = int(p.match.group(1))
    p.expect(PROMPT)
    return pid


def writes(pid: int) -> int:
    """Bytes the process has written so far (/proc/PID/io wchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def assert_clean(d: Daemon) -> None:
    """No child process and no pty left in the daemon."""
    pid = d.proc.pid
    assert wait_until(lambda: not children(pid) and not pty_fds(pid)), \
        (children(pid), pty_fds(pid))


# -- negotiation ------------------------------------------------------------------------------


def test_negotiation_sequence(daemon):
    """The server offers ECHO and SGA, asks NAWS, TTYPE, NEW-ENVIRON, then fetches TTYPE."""
    c = client(daemon, answer=False)
    c.expect(b"login: ")
    assert c.commands[:5] == [
        (wire.WILL, wire.ECHO), (wire.WILL, wire.SGA), (wire.DO, wire.NAWS),
        (wire.DO, wire.TTYPE), (wire.DO, wire.NEW_ENVIRON)]
    c.commands.clear()
    # Agree to TTYPE: the server asks for the type with SB TTYPE SEND.
    c.command(wire.WILL, wire.TTYPE)
    c.command(wire.DO, wire.ECHO)  # acknowledges the server's WILL ECHO: no answer
    c.command(wire.DO, 99)  # unknown: refused
    c.command(wire.WILL, wire.LINEMODE)  # refused: we want character mode
    c.command(wire.DO, wire.BINARY)  # agreed
    c.command(wire.WILL, wire.BINARY)  # agreed
    c.command(wire.WILL, 36)  # old ENVIRON: refused
    c.settle()
    assert (wire.TTYPE, bytes((wire.TTYPE_SEND,))) in c.subnegotiations
    assert c.commands == [(wire.WONT, 99), (wire.DONT, wire.LINEMODE),
                          (wire.WILL, wire.BINARY), (wire.DO, wire.BINARY),
                          (wire.DONT, 36)]
    # Asking again for what is on already gets no answer: no negotiation loop.
    c.commands.clear()
    c.command(wire.DO, wire.BINARY)
    c.command(wire.DO, wire.ECHO)
    c.command(wire.WONT, 99)
    c.settle()
    assert c.commands == []
    c.close()


def test_raw_socket_without_negotiation_gets_a_line_session(daemon):
    """A client that never answers (like netcat) still logs in with plain lines."""
    s = socket.create_connection(("127.0.0.1", daemon.port("telnet")), timeout=10)
    received = b""

    def until(token: bytes) -> None:
        nonlocal received
        deadline = time.monotonic() + 10
        while token not in received and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            received += chunk
        assert token in received, received

    until(b"login: ")
    s.sendall(b"alice\n")
    until(b"Password: ")
    s.sendall(b"secret\n")
    until(b"# ")
    s.sendall(b"echo hi-$((6*7))\n")
    until(b"hi-42")
    assert b"secret" not in received
    # The client echoes locally, so neither the server nor the pty echoes.
    assert b"alice" not in received and b"echo hi" not in received
    s.sendall(b"exit\n")
    s.settimeout(10)
    while s.recv(4096):
        pass
    s.close()


# -- the real telnet client ------------------------------------------------------------------


def test_real_client_login_pty_term_size_resize_and_exit(daemon):
    p = spawn_telnet(daemon, rows=33, cols=101, term="vt220")
    try:
        telnet_login(p)
        p.sendline("tty")
        p.expect(r"/dev/pts/\d+")
        p.expect(PROMPT)
        p.sendline('echo "term""=$TERM user=$USER home=$HOME"')
        p.expect(r"term=(\S+) user=(\S+) home=(\S+)")
        assert p.match.group(1) == "vt220"
        assert p.match.group(2) == "alice"
        assert p.match.group(3) == str(daemon.data_dir / "home" / "alice")
        p.expect(PROMPT)
        p.sendline("stty size")
        p.expect(r"\n(\d+) (\d+)\r\n")
        assert (p.match.group(1), p.match.group(2)) == ("33", "101")
        p.expect(PROMPT)
        # A resize reaches the pty: the telnet client sends NAWS on SIGWINCH.
        p.setwinsize(40, 120)

        def size() -> tuple[str, str]:
            p.sendline("stty size")
            p.expect(r"\n(\d+) (\d+)\r\n")
            got = (p.match.group(1), p.match.group(2))
            p.expect(PROMPT)
            return got

        assert wait_until(lambda: size() == ("40", "120"), timeout=10), size()
        p.sendline("exit")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)


def test_real_client_bad_password_three_tries(daemon):
    p = spawn_telnet(daemon)
    try:
        for _attempt in range(3):
            p.expect("login: ")
            p.sendline("alice")
            p.expect("Password: ")
            p.sendline("wrong")
            p.expect("Login incorrect")
        p.expect(r"Maximum number of tries exceeded \(3\)")
        p.expect(pexpect.EOF)
        assert "wrong" not in p.before
    finally:
        p.close(force=True)


def test_real_client_ctrl_c_stops_sleep(daemon):
    p = spawn_telnet(daemon)
    try:
        telnet_login(p)
        shell = login_shell_pid(p)
        seen = io.StringIO()
        p.logfile_read = seen
        p.sendline('sleep 100; echo "not""-interrupted"')
        sleeper = wait_child(shell, ["sleep", "100"])
        p.sendcontrol("c")
        p.expect(PROMPT, timeout=10)
        p.sendline("echo after-$((2+3))")
        p.expect("after-5")
        assert "not-interrupted" not in seen.getvalue()
        assert wait_until(lambda: not alive(sleeper))
        p.sendline("exit")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)


def test_real_client_escape_commands_ayt_and_ip(daemon):
    """telnet(1)'s own `send ayt` and `send ip` (IAC AYT, IAC IP on the wire)."""
    p = spawn_telnet(daemon)
    try:
        telnet_login(p)
        shell = login_shell_pid(p)
        p.sendcontrol("]")
        p.expect("telnet> ")
        p.sendline("send ayt")
        p.expect(r"\[Yes\]")
        p.sendline("sleep 100")
        wait_child(shell, ["sleep", "100"])
        p.sendcontrol("]")
        p.expect("telnet> ")
        p.sendline("send ip")
        p.expect(r"\^C\r\n")  # the pty's echo of the interrupt character
        p.expect(PROMPT)
        p.sendline('echo "after""-$((2+3))"')
        p.expect("after-5")
        p.sendline("exit")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)


def test_real_client_vi_draws_full_screen(daemon, tmp_path):
    target = tmp_path / "poem.txt"
    target.write_text("roses are red\n")
    p = spawn_telnet(daemon, rows=24, cols=80, term="xterm")
    try:
        telnet_login(p)
        p.sendline(f"vi {target}")
        p.expect("roses are red")
        p.expect("~")  # empty-line markers: vi painted the screen
        p.send("\x1b:q!\r")
        p.expect(PROMPT)
        p.sendline("top -n 1 | head -n 5")
        p.expect("load average")
        p.expect(PROMPT)
        p.sendline("exit")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)


# -- login and security ---------------------------------------------------------------------


def test_password_is_not_echoed(daemon):
    c = client(daemon)
    c.expect(b"login: ")
    c.sendline("alice")
    c.expect(b"alice\r\n")  # the name is echoed by the server (it said WILL ECHO)
    c.expect(b"Password: ")
    c.sendline("secret")
    c.expect(PROMPT)
    assert b"secret" not in c.raw
    c.close()


def test_cve_2026_24061_environ_user_never_picks_the_user(daemon):
    """NEW-ENVIRON USER='-f root' must meet the login prompt, and go nowhere."""
    c = client(daemon, environ=[("USER", "-f root"), ("LANG", "C.UTF-8"),
                                ("NETSUITE_TEST_X", "kept"), ("LD_PRELOAD", "/tmp/evil.so"),
                                ("FOO", "dropped")])
    c.expect(b"login: ")
    c.settle()  # the server has asked for the environment and got it
    assert (wire.NEW_ENVIRON, bytes((wire.ENV_SEND,))) in c.subnegotiations
    assert bytes(c.buffer) == b""  # no password prompt, no shell: still at login:
    c.sendline("alice")
    c.expect(b"Password: ")
    c.sendline("secret")
    c.expect(PROMPT)
    out = run(c, 'echo "u=$USER l=$LOGNAME lang=$LANG x=$NETSUITE_TEST_X '
                 'ld=${LD_PRELOAD-unset} foo=${FOO-unset}"; id -un')
    assert "u=alice l=alice lang=C.UTF-8 x=kept ld=unset foo=unset" in out
    c.close()


def test_cve_2026_24061_without_password_no_shell(daemon):
    """With USER='-f root' and an empty password nothing runs."""
    c = client(daemon, environ=[("USER", "-f root")])
    c.expect(b"login: ")
    c.sendline("-f root")
    c.expect(b"Password: ")
    c.sendline("")
    c.expect(b"Login incorrect")
    c.expect(b"login: ")
    c.close()


def test_unknown_user_and_typeahead(daemon):
    c = client(daemon)
    c.expect(b"login: ")
    c.sendline("nobody-here")
    c.expect(b"Password: ")
    c.sendline("x")
    c.expect(b"Login incorrect")
    c.expect(b"login: ")
    # Login and first command typed at once: the command waits for the shell.
    c.send(b"alice\r\nsecret\r\necho typed-ahead-$((40+2))\r\n")
    c.expect(b"typed-ahead-42")
    c.close()


def test_login_timeout(make_daemon):
    d = make_daemon(config=config(login_timeout=1),
                    listeners=["telnet"], users={"alice": "secret"})
    c = client(d)
    c.expect(b"login: ")
    c.expect(b"Login timed out after 1 seconds", timeout=10)
    assert c.wait_closed()


def test_per_user_program_with_user_substitution(make_daemon):
    d = make_daemon(config=config(
        user_programs={"bob": ["/bin/echo", "hello {user}", "{user}{user}"],
                       "carol": ["/nonexistent/program"]}),
        listeners=["telnet"], users={"bob": "pw", "alice": "secret", "carol": "pw"})
    c = client(d)
    c.login("bob", "pw", prompt="")
    c.expect(b"hello bob bobbob\r\n")
    assert c.wait_closed()
    c = shell(d)  # alice still gets the shell
    c.close()
    c = client(d)
    c.login("carol", "pw", prompt="")
    c.expect(b"Cannot start your session")
    assert c.wait_closed()


def test_config_errors_name_key_and_reason():
    from netsuite.config import ConfigError, load

    cases = [
        ({"telnet.env_whitelist": ["LD_*"]}, "telnet.env_whitelist[0]"),
        ({"telnet.env_whitelist": ["USER"]}, "telnet.env_whitelist[0]"),
        ({"telnet.program": ["sh"]}, "telnet.program"),
        ({"telnet.user_programs": {"bob": []}}, "telnet.user_programs.bob"),
        ({"telnet.max_tries": 0}, "telnet.max_tries"),
        ({"telnet.default_term": "x y"}, "telnet.default_term"),
    ]
    for overrides, key in cases:
        with pytest.raises(ConfigError) as info:
            load(None, overrides=overrides)
        assert info.value.key == key, (overrides, str(info.value))
        assert info.value.reason


# -- the terminal ------------------------------------------------------------------------------


def test_iac_ip_interrupts_and_ayt_answers(daemon):
    c = shell(daemon)
    pid = int(run(c, "echo $$").strip())
    c.sendline('sleep 100; echo "not""-interrupted"')
    sleeper = wait_child(pid, ["sleep", "100"])
    c.command(wire.IP)
    c.expect(PROMPT)
    c.command(wire.AYT)
    c.expect(re.escape(b"[Yes]"))
    out = run(c, "echo still-$((1+1))")
    assert "still-2" in out
    assert b"not-interrupted" not in c.raw
    assert wait_until(lambda: not alive(sleeper))
    c.close()


def test_ao_answers_data_mark_and_ec_el_edit_the_line(daemon):
    c = shell(daemon)
    c.raw.clear()
    c.command(wire.AO)
    c.settle()
    assert wire.command(wire.DM) in c.raw
    # EC erases one character, EL the whole line (the pty's ERASE and KILL).
    c.send(b"echo abcX")
    c.command(wire.EC)
    c.send(b"\r\n")
    c.expect(b"\r\nabc\r\n")
    c.expect(PROMPT)
    c.send(b"echo wrong")
    c.command(wire.EL)
    c.send(b'echo "fine""-$((1+1))"\r\n')
    c.expect(b"\r\nfine-2\r\n")  # not "wrongecho fine-2"
    c.expect(PROMPT)
    c.close()


def test_0xff_round_trips_in_binary_mode(daemon):
    c = shell(daemon, binary=True)
    c.settle()
    assert c.state.get(("us", wire.BINARY)) and c.state.get(("him", wire.BINARY))
    # Server to client: a 0xFF byte from the program arrives doubled on the wire.
    c.raw.clear()
    c.sendline(r"printf 'A\377B\n'")
    c.expect(b"A\xffB")
    assert b"A\xff\xffB" in c.raw
    c.expect(PROMPT)
    # Client to server: IAC IAC reaches the program as one 0xFF byte.
    pid = int(run(c, "echo $$").strip())
    c.sendline("stty raw -echo; head -c 3 | od -An -tx1; stty sane")
    wait_child(pid, ["head", "-c", "3"])  # stty raw is done
    c.send(b"\xff\xfe\x41")
    c.expect(rb"ff fe 41")
    c.expect(PROMPT)
    c.close()


def test_0xff_round_trips_without_binary(daemon):
    c = shell(daemon, binary=False)
    c.sendline(r"printf 'A\377B\n'")
    c.expect(b"A\xffB")
    c.expect(PROMPT)
    pid = int(run(c, "echo $$").strip())
    c.sendline("stty raw -echo; head -c 2 | od -An -tx1; stty sane")
    wait_child(pid, ["head", "-c", "2"])  # stty raw is done
    c.send(b"\xff\x42")
    c.expect(rb"ff 42")
    c.close()


def test_naws_before_login_and_changes(daemon):
    c = shell(daemon, size=(132, 50))
    assert run(c, "stty size").strip() == "50 132"
    c.set_size(90, 30)
    assert wait_until(lambda: run(c, "stty size").strip() == "30 90", timeout=10)
    c.close()


def test_term_from_ttype_is_lowercased_and_checked(daemon):
    c = shell(daemon, ttype="XTERM-256COLOR")
    assert run(c, "echo $TERM").strip() == "xterm-256color"
    c.close()
    c = shell(daemon, ttype="vt100; rm -rf /")
    assert run(c, "echo $TERM").strip() == "dumb"
    c.close()
    c = shell(daemon, ttype=None)
    assert run(c, "echo $TERM").strip() == "dumb"
    c.close()


def test_tls_listener(daemon):
    c = shell(daemon, listener="telnets", tls=True)
    assert "/dev/pts/" in run(c, "tty")
    c.close()


# -- robustness -------------------------------------------------------------------------------


def test_garbage_iac_and_endless_subnegotiation_close_only_that_connection(daemon):
    good = shell(daemon)
    # Garbage: unknown commands, IAC SUSP/ABORT (Twisted raises on those),
    # stray SE, broken SB, nonsense options.  The connection survives.
    garbage = client(daemon)
    garbage.expect(b"login: ")
    garbage.send_raw(bytes([255, 237, 255, 238, 255, 1, 255, 200, 255, 240,
                            255, 250, 255, 240, 255, 250, 31, 1, 255, 251, 255, 253, 0,
                            255, 252, 77, 255, 254, 255, 250, 24, 0, 255, 5, 255]))
    # Every byte value, but no Enter, ^C or ^D: those would act on the login prompt.
    # (The trailing NUL completes the final lone IAC.)
    garbage.send_raw(bytes(b for b in range(256) if b not in (3, 4, 10, 13)) * 4 + b"\0")
    garbage.command(wire.AYT)
    garbage.expect(re.escape(b"[Yes]"))
    garbage.close()
    # Endless subnegotiation: that connection is closed.
    endless = client(daemon)
    endless.expect(b"login: ")
    endless.send_raw(bytes([255, 250, wire.TTYPE]))
    try:
        for _ in range(64):
            endless.send_raw(b"x" * 1024)
    except OSError:
        pass
    assert endless.wait_closed()
    # The logged-in session did not notice.
    assert "ok-7" in run(good, "echo ok-$((3+4))")
    good.close()


def test_iac_eof_and_abort_reach_the_program(daemon):
    """IAC EOF types the terminal's EOF (cat ends), IAC ABORT its QUIT (sleep dies)."""
    c = shell(daemon)
    pid = int(run(c, "echo $$").strip())
    c.sendline('cat; echo "cat""-done"')
    wait_child(pid, ["cat"])
    c.command(wire.EOF)
    c.expect(b"cat-done")
    c.expect(PROMPT)
    c.sendline('sleep 100; echo "status""=$?"')
    wait_child(pid, ["sleep", "100"])
    c.command(wire.ABORT)
    c.expect(rb"status=131")  # 128 + SIGQUIT
    c.close()


def test_hangup_sends_sighup_to_the_session_and_reaps(daemon):
    c = shell(daemon)
    shell_pid = int(run(c, "echo $$").strip())
    bg = int(run(c, "sleep 1001 & echo $!").strip())
    c.sendline("sleep 1000")
    fg = wait_child(shell_pid, ["sleep", "1000"])
    assert alive(shell_pid) and alive(bg) and alive(fg)
    c.close()  # the client drops the connection
    assert wait_until(lambda: not alive(shell_pid) and not alive(bg) and not alive(fg)), \
        (alive(shell_pid), alive(bg), alive(fg))
    assert_clean(daemon)


def test_program_ignoring_sighup_is_killed(daemon):
    c = shell(daemon)
    pid = int(run(c, "echo $$").strip())
    c.sendline("trap '' HUP; exec sleep 1000")
    assert wait_until(lambda: cmdline(pid) == ["sleep", "1000"])  # the trap is set
    c.close()
    assert wait_until(lambda: not alive(pid), timeout=15)
    assert_clean(daemon)


def test_backpressure_program_output(daemon):
    """`yes` to a client that does not read: the server's memory stays flat."""
    c = shell(daemon)
    pid = daemon.proc.pid
    sh = int(run(c, "echo $$").strip())
    before = rss_kb(pid)
    c.sendline("yes")
    # We read nothing: once the socket, the server and the pty are full, `yes` blocks.
    # A server that kept reading the pty would keep `yes` writing (and grow).
    yes = wait_child(sh, ["yes"])
    assert wait_steady(lambda: writes(yes)), "the server kept reading the pty"
    after = rss_kb(pid)
    assert after - before < 10 * 1024, (before, after)
    c.close()
    assert_clean(daemon)


def test_backpressure_client_input(daemon):
    """A program that does not read: the server stops reading the client."""
    c = shell(daemon)
    pid = daemon.proc.pid
    sh = int(run(c, "echo $$").strip())
    c.sendline("sleep 30")
    wait_child(sh, ["sleep", "30"])  # the shell no longer reads the pty
    before = rss_kb(pid)
    c.sock.setblocking(False)
    sent = 0
    # Whole lines: in canonical mode (the shell's while sleep runs) Linux drops
    # input past a full buffer only while it holds no complete line, so a
    # newline-free stream would be discarded by the kernel, never pushed back.
    chunk = (b"a" * 63 + b"\n") * 1024
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < 256 * 1024 * 1024:
        try:
            sent += c.sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
    after = rss_kb(pid)
    assert sent < 64 * 1024 * 1024, sent  # the socket filled up: nobody kept reading
    assert after - before < 10 * 1024, (before, after)
    # While the server does not read the client it cannot see the client leave
    # (telnetd neither): the session ends when its program does, and then the
    # pty, the unread input and the connection all go.
    os.killpg(sh, signal.SIGKILL)
    c.sock.setblocking(True)
    assert c.wait_closed(15)
    c.close()
    assert_clean(daemon)


def test_fifty_concurrent_sessions_each_with_own_pty(daemon):
    clients = []
    try:
        for _ in range(50):
            clients.append(client(daemon))
        for c in clients:
            c.expect(b"login: ")
            c.sendline("alice")
        for c in clients:
            c.expect(b"Password: ")
            c.sendline("secret")
        ttys = set()
        for c in clients:
            c.expect(PROMPT, timeout=60)
            c.sendline("tty")
        for c in clients:
            ttys.add(c.expect(rb"/dev/pts/\d+", timeout=30).group(0))
        assert len(ttys) == 50
        assert len(children(daemon.proc.pid)) == 50
        # Half leave with exit, half just drop the connection.
        for c in clients[:25]:
            c.sendline("exit")
        for c in clients[:25]:
            assert c.wait_closed(30)
    finally:
        for c in clients:
            c.close()
    assert_clean(daemon)


def test_shutdown_hangs_up_sessions(make_daemon):
    d = make_daemon(config=BASE_CONFIG, listeners=["telnet"], users={"alice": "secret"})
    c = shell(d)
    pid = int(run(c, "echo $$").strip())
    d.stop()
    assert wait_until(lambda: not alive(pid))
    c.close()


# -- switching users (root only) ----------------------------------------------------------------


@pytest.fixture
def system_user():
    """A throwaway system account in group users, with a home, removed afterwards."""
    name = f"nstn{secrets.token_hex(3)}"
    with tools.system_account(name, "Sys-pw-1", "--create-home", "--groups", "users"):
        yield name


def test_system_account_via_pam_runs_as_that_user(make_daemon, system_user):
    import pwd

    pytest.importorskip("pam")
    d = make_daemon(config=config({"auth": ["passwd", "pam"]}),
                    listeners=["telnet"])
    c = client(d)
    c.login(system_user, "Sys-pw-1", PROMPT)
    account = pwd.getpwnam(system_user)
    out = run(c, "id -u; id -gn; id -Gn; pwd; echo $SHELL; stat -c %U $(tty)")
    lines = out.split()
    assert lines[0] == str(account.pw_uid)
    assert "users" in lines[2:-3]
    assert lines[-3] == account.pw_dir
    assert lines[-2] == "/bin/sh"
    assert lines[-1] == system_user
    c.close()
    assert_clean(d)


def test_root_account_refused_unless_permitted(make_daemon):
    """A login that maps to uid 0 is refused by default (telnet.permit_root_login)."""
    d = make_daemon(config=config(permit_root_login=False), listeners=["telnet"],
                    users={"root": "pw"})
    c = client(d)
    c.expect(b"login: ")
    c.sendline("root")
    c.expect(b"Password: ")
    c.sendline("pw")
    c.expect(b"Login incorrect")
    c.close()
    d.stop()
    d.config["telnet"]["permit_root_login"] = True
    d.start()
    c = client(d)
    c.login("root", "pw", PROMPT)
    assert run(c, "id -u").strip() == "0"
    c.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root server could run a root shell")
def test_password_file_user_gets_no_root_shell_by_default(make_daemon):
    """Server as root, no virtual_user: a mail-only account must not get a root shell."""
    d = make_daemon(config=config(permit_root_login=False), listeners=["telnet"],
                    users={"mailonly": "pw"})
    c = client(d)
    c.expect(b"login: ")
    c.sendline("mailonly")
    c.expect(b"Password: ")
    c.sendline("pw")
    c.expect(b"Login incorrect")
    c.close()
    assert "would run as root" in d.log()


def test_connection_cap_says_busy(make_daemon):
    d = make_daemon(config=config(max_connections_per_address=2),
                    listeners=["telnet"], users={"alice": "secret"})
    first, second = client(d), client(d)
    first.expect(b"login: ")
    second.expect(b"login: ")
    third = client(d)
    third.expect(b"Too many connections, try later.\r\n")
    assert third.wait_closed()
    first.close()
    second.close()


def test_idle_timeout_hangs_up_the_session(make_daemon):
    d = make_daemon(config=config(idle_timeout=1),
                    listeners=["telnet"], users={"alice": "secret"})
    c = shell(d)
    pid = int(run(c, "echo $$").strip())
    c.expect(b"Idle too long; hanging up.", timeout=10)
    assert c.wait_closed()
    assert wait_until(lambda: not alive(pid))
    assert_clean(d)


def test_utmp_and_wtmp_records(make_daemon, tmp_path):
    """`who` lists the session while it runs; `last` shows it, ended, afterwards."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("who") or not shutil.which("last"):
        pytest.skip("needs root, who and last")
    utmp, wtmp = tmp_path / "utmp", tmp_path / "wtmp"
    utmp.touch()
    wtmp.touch()
    d = make_daemon(config=config(utmp=True, utmp_file=str(utmp), wtmp_file=str(wtmp)),
        listeners=["telnet"], users={"alice": "secret"})
    c = shell(d)
    tty = run(c, "tty").strip().removeprefix("/dev/")
    who = subprocess.run(["who", str(utmp)], capture_output=True, text=True).stdout
    assert re.search(rf"^alice\s+{tty}\s.*\(127\.0\.0\.1\)", who, re.M), who
    c.sendline("exit")
    assert c.wait_closed()
    assert wait_until(lambda: "alice" not in subprocess.run(
        ["who", str(utmp)], capture_output=True, text=True).stdout)
    last = subprocess.run(["last", "-f", str(wtmp)], capture_output=True, text=True).stdout
    line = next(x for x in last.splitlines() if x.startswith("alice"))
    assert tty in line and "127.0.0.1" in line and "still logged in" not in line, last


def test_virtual_user_runs_as_configured_account(make_daemon):
    """Password-file users without a system account run as telnet.virtual_user."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    d = make_daemon(config=config(virtual_user="nobody"), listeners=["telnet"],
                    users={"alice": "secret"})
    c = shell(d)
    assert run(c, "id -u; id -g").split() == [str(nobody.pw_uid), str(nobody.pw_gid)]
    home = d.data_dir / "home" / "alice"
    assert home.stat().st_uid == nobody.pw_uid and (home.stat().st_mode & 0o777) == 0o700
    c.close()
    assert_clean(d)


def test_unknown_virtual_user_is_a_config_error(make_daemon):
    d = make_daemon(config=config(virtual_user="no-such-account-here"), listeners=["telnet"],
                    start=False)
    with pytest.raises(RuntimeError) as info:
        d.start()
    assert "telnet.virtual_user" in str(info.value) and "no-such-account-here" in str(info.value)


def test_exit_with_a_background_job_still_closes(daemon):
    """A background job holding the pty open does not keep the connection open."""
    c = shell(daemon)
    bg = int(run(c, "sleep 30 & echo $!").strip())
    c.sendline("exit")
    assert c.wait_closed(15)
    assert wait_until(lambda: not pty_fds(daemon.proc.pid))
    if alive(bg):
        os.kill(bg, 15)  # not ours to keep: as with any telnetd, it may outlive the login
