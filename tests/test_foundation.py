"""Start-up, configuration, the admin CLI, custom realms and packaging, with the real daemon."""

from __future__ import annotations

import ftplib
import io
import json
import os
import poplib
import re
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from harness import ROOT, Daemon, twistd
from rawsmtp import insecure_context


def run_twistd(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run twistd expecting it to exit by itself (a start-up error), on this tree's code."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*twistd(), "-n", "--pidfile=", "netsuite", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


# -- bad configuration stops start-up with file, key and reason ----------------

BAD_CONFIGS = [
    ("[smtp\nmax = 1", "not valid TOML"),
    ("[smtp]\nmax_mesage_size = 10", "smtp.max_mesage_size: unknown key"),
    ("[smtp]\nmax_message_size = 'big'", "smtp.max_message_size: expected an integer"),
    ("[smtp]\nmax_message_size = -5", "smtp.max_message_size: must be greater than 0"),
    ("[nonsense]\nx = 1", "[nonsense]: unknown section"),
    ("[listen]\nsmtp = ['tcp:notaport']", "listen.smtp[0]: bad endpoint"),
    ("[listen]\nbogus = ['tcp:2525']", "listen.bogus: unknown listener"),
    ("[server]\nauth = ['nosuchchecker']", "server.auth[0]: unknown checker"),
    ("[server]\nrealm = 'nosuch.module:Realm'", "server.realm: cannot load"),
    ("[tls]\ncertificate = '/nonexistent/cert.pem'\nkey = '/nonexistent/key.pem'",
     "tls.certificate: cannot read /nonexistent/cert.pem"),
    ("[tls]\nmin_version = '1.0'", "tls.min_version"),
    ("[mail]\nlocal_domains = []", "mail.local_domains"),
    ("[mail]\npostmaster = 'nobody'", "mail.postmaster: 'nobody' is not a user, an alias"),
    ("[mail]\npostmaster = 'pm@remote.test'", "mail.postmaster: 'pm@remote.test' is not in a"),
    ("[smtp]\nshared_senders = { 'team' = ['alice'] }", "smtp.shared_senders: 'team'"),
]


@pytest.mark.parametrize("text, expected", BAD_CONFIGS)
def test_bad_config_stops_startup_with_one_clear_line(tmp_path, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text + f"\n[server]\ndata_dir = '{tmp_path / 'data'}'\n"
                      if "[server]" not in text else text)
    result = run_twistd(tmp_path, "--config", str(config))
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in result.stdout
    assert str(config) in err and expected in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "data" / "run" / "listening.json").exists()


def test_missing_config_file_and_bad_option(tmp_path):
    result = run_twistd(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert result.returncode != 0 and "nope.toml: no such file" in result.stderr
    result = run_twistd(tmp_path, "--smtp", "tcp:bogus")
    assert result.returncode != 0 and "listen.smtp[0]: bad endpoint" in result.stderr
    result = run_twistd(tmp_path, "--disable", "gopher")
    assert result.returncode != 0 and "unknown listener 'gopher'" in result.stderr


def test_port_in_use_is_one_clear_line(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        d = Daemon(tmp_path, listeners=["smtp"])
        d.write_config()
        result = subprocess.run([*d.command(f"--smtp=tcp:{port}:interface=127.0.0.1")],
                                cwd=tmp_path, capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    out = result.stdout + result.stderr + d.log()
    assert result.returncode != 0
    assert f"listen.smtp: cannot listen on tcp:{port}:interface=127.0.0.1" in out
    assert "Traceback" not in result.stderr


def test_embedded_defaults_start_with_no_options(tmp_path):
    """`twistd -n netsuite` alone: loopback, unprivileged ports, data dir in cwd, a cert."""
    proc = subprocess.Popen([*twistd(), "-n", "--pidfile=", "--logfile=twistd.log", "netsuite"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = tmp_path / "netsuite-data" / "run" / "listening.json"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), (tmp_path / "twistd.log").read_text()
        listen = json.loads(ready.read_text())["listen"]
        assert listen["smtp"] == [2525] and listen["submission"] == [2587]
        assert listen["smtps"] == [2465]
        assert (tmp_path / "netsuite-data" / "tls" / "cert.pem").exists()
        key = tmp_path / "netsuite-data" / "tls" / "key.pem"
        assert key.stat().st_mode & 0o077 == 0
        with smtplib.SMTP_SSL("127.0.0.1", 2465, timeout=10, context=insecure_context()) as s:
            assert s.noop()[0] == 250
        with pytest.raises(OSError):  # loopback only
            socket.create_connection((_other_local_address(), 2525), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


def _other_local_address() -> str:
    """A non-loopback address of this machine, or a loopback one that is not 127.0.0.1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        address = s.getsockname()[0]
    except OSError:
        address = "127.0.0.2"
    finally:
        s.close()
    return address if address != "127.0.0.1" else "127.0.0.2"


def test_command_line_overrides_the_file(make_daemon, tmp_path):
    d = make_daemon(listeners=["smtp"], start=False)
    d.start("--hostname", "override.test", "--disable", "smtp",
            "--submission", "tcp:0:interface=127.0.0.1")
    assert set(d.ports) == {"submission"}
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=10) as s:
        assert s.ehlo()[1].startswith(b"override.test")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_implicit_tls_on_plain_tcp_endpoint_and_tls12_floor(make_daemon):
    d = make_daemon(listeners=["smtps"])
    ctx = insecure_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", d.port("smtps")), timeout=5) as raw:
            ctx.wrap_socket(raw).recv(10)
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")


# -- the admin CLI -----------------------------------------------------------------

def test_cli_users_shared_with_the_running_daemon(make_daemon):
    d = make_daemon(listeners=["smtps"])
    result = d.cli("user", "add", "dave", "--password-stdin", input="dave-pw\n")
    assert "added dave" in result.stdout
    assert "dave:$argon2id$" in (d.data_dir / "passwd").read_text()
    assert d.cli("user", "list").stdout.split() == ["dave"]
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        assert s.login("dave", "dave-pw")[0] == 235   # no restart needed
    d.cli("user", "passwd", "dave", "--password-stdin", input="new-pw\n")
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("dave", "dave-pw")
        assert s.login("dave", "new-pw")[0] == 235
    failing = [
        (("user", "add", "dave", "--password-stdin"), "exists"),
        (("user", "add", "--password-stdin", "--", "-bad"), "invalid user name"),
        (("user", "add", "../etc", "--password-stdin"), "invalid user name"),
        (("user", "del", "nobody"), "no user"),
        (("user", "passwd", "nobody", "--password-stdin"), "no user"),
    ]
    for args, message in failing:
        result = d.cli(*args, input="pw\n", check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    assert d.cli("user", "add", "erin", "--password-stdin", input="\n",
                 check=False).returncode != 0     # empty password refused
    d.cli("user", "del", "dave")
    assert d.cli("user", "list").stdout.split() == []


def test_cli_cert_and_check(tmp_path):
    d = Daemon(tmp_path, listeners=["smtp"])
    result = d.cli("cert", "mail.example.test")
    cert = d.data_dir / "tls" / "cert.pem"
    assert "wrote" in result.stdout and cert.exists()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cert)  # a valid PEM certificate
    result = d.cli("check")
    assert result.returncode == 0 and "OK" in result.stdout
    d.config["smtp"] = {"max_recipients": "many"}
    result = d.cli("check", check=False)
    assert result.returncode == 2
    assert "smtp.max_recipients: expected an integer" in result.stderr


# -- a custom realm loaded from the config ------------------------------------------

def test_example_sqlite_realm_routes_mail(make_daemon, tmp_path):
    db = tmp_path / "routing.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE routes (address TEXT, mailbox TEXT)")
        conn.executemany("INSERT INTO routes VALUES (?, ?)", [
            ("sales@example.test", "alice"), ("sales@example.test", "bob"),
            ("@shop.test", "bob")])
    d = make_daemon(listeners=["smtp"], users={"alice": "a", "bob": "b"}, config={
        "server": {"realm": "sqlite_realm:SQLiteRealm"},
        "realm": {"database": str(db)},
        "mail": {"local_domains": ["example.test", "shop.test"]},
    })
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("x@remote.test", ["sales@example.test"], b"Subject: 1\r\n\r\nsales\r\n")
        s.sendmail("x@remote.test", ["anything@shop.test"], b"Subject: 2\r\n\r\nshop\r\n")
        s.mail("x@remote.test")
        assert s.rcpt("nobody@example.test")[0] == 550
        assert s.rcpt("alice@example.test")[0] == 250  # built-in rules still apply
    assert d.wait_for(lambda: len(d.messages("bob")) == 2)
    assert [m.endswith(b"sales\n") for m in d.messages("alice")] == [True]
    assert sorted(m.rsplit(b"\n\n", 1)[1] for m in d.messages("bob")) == [b"sales\n", b"shop\n"]


def test_custom_realm_misconfigured_stops_startup(tmp_path):
    d = Daemon(tmp_path, listeners=["smtp"], config={
        "server": {"realm": "sqlite_realm:SQLiteRealm"}})
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "realm.database: set the SQLite routing file" in str(e.value)


SHARED_FTP_REALM = """
from twisted.protocols import ftp

from netsuite.realm import ANONYMOUS, NetsuiteRealm


class SharedFTPRealm(NetsuiteRealm):
    \"\"\"Every account's FTP login lands in one shared root; the rest is built in.\"\"\"

    def __init__(self, config):
        super().__init__(config)
        builtin = self.avatar_makers[ftp.IFTPShell]
        self.avatar_makers[ftp.IFTPShell] = (
            lambda user: builtin(user if user is ANONYMOUS else "shared"))
"""


def test_custom_realm_replaces_one_avatar_maker(make_daemon, tmp_path):
    """README: a subclass replaces one entry of realm.avatar_makers."""
    (tmp_path / "shared_ftp_realm.py").write_text(SHARED_FTP_REALM)
    path = os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")])
    d = make_daemon(listeners=["ftp", "pop3"], users={"alice": "a", "bob": "b"}, config={
        "server": {"realm": "shared_ftp_realm:SharedFTPRealm"},
        "ftp": {"require_tls": False}, "pop3": {"allow_plaintext_auth": True},
    }, env={"PYTHONPATH": path})
    with ftplib.FTP() as f:
        f.connect("127.0.0.1", d.port("ftp"), timeout=10)
        f.login("alice", "a")
        f.storbinary("STOR note.txt", io.BytesIO(b"from alice\n"))
    with ftplib.FTP() as f:
        f.connect("127.0.0.1", d.port("ftp"), timeout=10)
        f.login("bob", "b")
        got = io.BytesIO()
        f.retrbinary("RETR note.txt", got.write)
    assert got.getvalue() == b"from alice\n"
    assert (d.data_dir / "ftp" / "shared" / "note.txt").is_file()
    assert not (d.data_dir / "ftp" / "alice" / "note.txt").exists()
    pop = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)  # other avatars: built in
    pop.user("bob")
    assert pop.pass_("b").startswith(b"+OK")
    pop.quit()


# -- packaging: the plugin is found after `pip install .` too ------------------------


def make_venv_seeing_this_environment(venv: Path) -> Path:
    """
    A fresh venv (for installing the wheel into) that sees the packages of the
    interpreter running the tests, whether that is a system Python or itself a
    venv.  C{--system-site-packages} alone reaches only the base interpreter's
    site-packages, so inside a venv Twisted would be missing; a C{.pth} adds
    this interpreter's own site directories after the new venv's, where the
    wheel goes, so the wheel's copy of netsuite is still the one imported
    (plain path lines: the outer editable-install hooks are not run).
    """
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    inner = subprocess.run([str(py), "-c", purelib],
                           check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        outer.append(site.getusersitepackages())
    lines = list(dict.fromkeys(p for p in outer if os.path.isdir(p)))
    Path(inner, "_outer_environment.pth").write_text("".join(f"{p}\n" for p in lines))
    return py

def test_wheel_ships_the_plugin_and_twistd_finds_it(tmp_path):
    """The editable install is what the rest of the suite runs on; this checks `pip install .`."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("netsuite-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/netsuite_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "netsuite/smtp/server.py" in names
    venv = tmp_path / "venv"
    py = make_venv_seeing_this_environment(venv)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(py), "-c", "import twisted.plugins.netsuite_plugin as m, netsuite; "
                        "print(m.__file__); print(netsuite.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(str(venv) in path for path in where), where
    # Its dependencies are the ones this suite runs on, in a venv or not (a venv
    # made from inside a venv sees only the base interpreter's site-packages).
    import twisted

    theirs = subprocess.run([str(py), "-c", "import twisted; print(twisted.__file__)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert theirs == twisted.__file__
    result = subprocess.run([str(py), "-c", "from twisted.scripts.twistd import run; run()",
                             "netsuite", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--submission" in result.stdout


def test_auth_option_and_tcp6_endpoint(make_daemon, tmp_path):
    """`--auth passwd:PATH` the twistd way, and a tcp6: listener on ::1."""
    from netsuite.auth.passwdfile import PasswordFile

    other = tmp_path / "other-passwd"
    PasswordFile(other).set_password("frank", "frank-pw")
    d = make_daemon(listeners=[], start=False)
    d.start(f"--auth=passwd:{other}", "--smtps", r"tcp6:0:interface=\:\:1")
    with smtplib.SMTP_SSL("::1", d.port("smtps"), timeout=10, context=insecure_context()) as s:
        assert s.login("frank", "frank-pw")[0] == 235
    result = subprocess.run([*twistd(), "netsuite", "--help-auth"], capture_output=True,
                            text=True, timeout=60)
    assert "--auth passwd" in result.stdout and "--auth pam" in result.stdout


def _have_ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


def test_readme_ipv6_endpoint_example_works_verbatim(make_daemon):
    """README: `--smtp tcp:2525:interface=127.0.0.1 --smtp tcp6:2525:interface=::1`."""
    if not _have_ipv6_loopback():
        pytest.skip("this machine has no ::1 to listen on")
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"`twistd -n netsuite (--smtp tcp:2525\S+ --smtp tcp6:2525\S+)`", readme)
    assert example, "README lost its endpoint example"
    args = example.group(1).replace(":2525:", ":0:").split()
    assert args[-1] == "tcp6:0:interface=::1"  # unescaped, as a user types it
    d = make_daemon(listeners=[], start=False)
    d.start(*args)
    v4, v6 = d.ports["smtp"]
    with smtplib.SMTP("127.0.0.1", v4, timeout=10) as s:
        assert s.ehlo()[0] == 250
    with smtplib.SMTP("::1", v6, timeout=10) as s:
        assert s.ehlo()[0] == 250
    assert "smtp listening on tcp6:0:interface=" in d.log()


def test_bracketed_ipv6_endpoint_in_the_config_file(make_daemon):
    if not _have_ipv6_loopback():
        pytest.skip("this machine has no ::1 to listen on")
    d = make_daemon(listeners=[], config={"listen": {
        "pop3": ["tcp6:port=0:interface=[::1]"], "imap": ["tcp6:0:interface=::1:backlog=5"]}})
    for name in ("pop3", "imap"):
        with socket.create_connection(("::1", d.port(name)), timeout=10) as conn:
            assert conn.recv(100)[:4] in (b"+OK ", b"* OK"), name


@pytest.mark.parametrize("endpoint", ["tcp6:0:interface=::1:bogus=1", "tcp6:port=x"])
def test_bad_endpoint_says_how_to_write_one(tmp_path, endpoint):
    result = run_twistd(tmp_path, "--data-dir", str(tmp_path / "data"), "--smtp", endpoint)
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("netsuite: listen.smtp[0]: bad endpoint"), err
    assert "tcp6:2525:interface=::1" in err and "interface=[::1]" in err, err


def _ca_and_leaf(directory: Path, hostname: str) -> tuple[Path, Path, Path]:
    """A CA, and a leaf for C{hostname} signed by it: cert, key, chain (the CA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, key, signer, ca: bool, san: str | None = None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
        return b.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netsuite test CA")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    ca = build(ca_name, ca_name, ca_key, ca_key, True)
    leaf = build(leaf_name, ca_name, leaf_key, ca_key, False, hostname)
    pem = serialization.Encoding.PEM
    paths = directory / "leaf.pem", directory / "leaf.key", directory / "chain.pem"
    paths[0].write_bytes(leaf.public_bytes(pem))
    paths[1].write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(pem))
    return paths


def test_configured_certificate_key_and_chain(make_daemon, tmp_path):
    cert, key, chain = _ca_and_leaf(tmp_path, "mail.example.test")
    d = make_daemon(listeners=["smtps", "submission"], config={
        "tls": {"certificate": str(cert), "key": str(key), "chain": str(chain)}})
    shown = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{d.port('smtps')}",
                            "-showcerts"], input="", capture_output=True, text=True, timeout=30)
    assert shown.stdout.count("-----BEGIN CERTIFICATE-----") == 2, shown.stdout
    # A client that trusts only the CA verifies the server by name, on both kinds of TLS.
    ctx = ssl.create_default_context(cafile=str(chain))
    with socket.create_connection(("127.0.0.1", d.port("smtps")), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
            assert tls.recv(100).startswith(b"220 ")
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=10) as s:
        s._host = "mail.example.test"
        s.starttls(context=ctx)
        assert s.noop()[0] == 250


def test_busy_line_on_an_implicit_tls_listener_is_inside_tls(make_daemon):
    d = make_daemon(listeners=["smtps"], config={"smtp": {"max_connections_per_address": 1}})
    first = socket.create_connection(("127.0.0.1", d.port("smtps")), timeout=10)
    first = insecure_context().wrap_socket(first)
    assert first.recv(100).startswith(b"220 ")
    try:
        with socket.create_connection(("127.0.0.1", d.port("smtps")), timeout=10) as raw:
            with insecure_context().wrap_socket(raw) as second:
                assert second.recv(100).startswith(b"421 4.7.0 Too many connections")
    finally:
        first.close()


def test_example_config_loads_and_documents_every_key():
    """etc/netsuite.toml stays a complete, valid example as sections grow."""
    import dataclasses
    import re

    from netsuite.config import LISTENERS, SECTIONS, load

    path = ROOT / "etc" / "netsuite.toml"
    config = load(path)
    assert config.server.hostname == "mail.example.org"
    text = path.read_text()
    missing = []
    for name, cls in SECTIONS.items():
        block = re.search(rf"^#? ?\[{name}\]\n(.*?)(?=^#? ?\[|\Z)", text, re.M | re.S)
        if block is None:
            missing.append(f"[{name}]")
            continue
        for f in dataclasses.fields(cls):
            if not re.search(rf"^#? ?{f.name} = ", block.group(1), re.M):
                missing.append(f"{name}.{f.name}")
    for name in LISTENERS:
        if not re.search(rf"^#? ?{name} = ", text, re.M):
            missing.append(f"listen.{name}")
    assert not missing, f"etc/netsuite.toml does not show: {', '.join(missing)}"
