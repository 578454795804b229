"""
Start the real daemon for tests: C{twistd -n netsuite} as a subprocess with a
generated config on 127.0.0.1 and ephemeral ports, learned from
C{DATA/run/listening.json} once every listener is up.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: SSH host keys made once per test process and copied into each new data
#: directory: generating a 3072-bit RSA key is a tenth of a daemon's start-up,
#: paid by every test. tests/test_ssh.py starts its daemon without them, so
#: generation on first start is still tested there.
_HOST_KEYS: Path | None = None


def seed_host_keys(data_dir: Path) -> None:
    """Give C{data_dir} this process's pre-made SSH host keys, unless it has keys."""
    global _HOST_KEYS
    from netsuite.ssh import hostkeys

    target = hostkeys.host_key_dir(data_dir)
    if target.exists():
        return
    if _HOST_KEYS is None:
        made = Path(tempfile.mkdtemp(prefix="netsuite-hostkeys-"))
        hostkeys.ensure_default_keys(made)
        _HOST_KEYS = hostkeys.host_key_dir(made)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_HOST_KEYS, target)


#: The store of daemons whose test does not choose one itself: C{postgresql}
#: puts their mail in PostgreSQL (a fresh database each, on one throwaway
#: cluster per process: L{pg.shared_cluster}).  Set by the C{mail_store}
#: fixture (conftest.py), with which the mail suite runs against both stores;
#: a benchmark takes it from C{NETSUITE_TEST_STORE}.
TEST_STORE = os.environ.get("NETSUITE_TEST_STORE", "maildir")


#: Set by tests/conftest.py: the suite's users get L{test_hash}es.  Off for the
#: benchmarks (which use this harness too): they measure logins at full cost.
CHEAP_HASHES = False


@functools.cache
def test_hash(password: str) -> str:
    """
    An argon2id hash of C{password} at the lowest cost (1 pass, 8 KiB) for
    the users tests add: the full cost (64 MiB, ~0.15 s of CPU to make and
    again to verify in each daemon) was 40% of the CPU of test_imap and
    test_pop3, and proves nothing a test checks.  C{netsuite user add}, the tests of the
    password file (test_passwdfile) and the benchmarks keep the full cost.
    """
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password)


def all_listeners() -> list[str]:
    """Every listener the installed protocol packages declare."""
    from netsuite import protocols
    from netsuite.config import LISTENERS

    protocols.load_all()
    return list(LISTENERS)


def twistd() -> list[str]:
    """The real twistd of this interpreter (C{python -m twisted} is C{twist})."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    """Enough TOML for test configs: one level of tables of scalars, lists, inline tables."""
    out = []
    for name, table in config.items():
        out.append(f"[{name}]")
        for key, value in table.items():
            out.append(f"{json.dumps(key)} = {toml_value(value)}")
        out.append("")
    return "\n".join(out)


def merge(base: dict, extra: dict) -> dict:
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for name, table in extra.items():
        result.setdefault(name, {}).update(table)
    return result


class Daemon:
    """One C{twistd -n netsuite} process in its own directory."""

    def __init__(self, directory: Path, config: dict | None = None,
                 listeners: list[str] | None = None, env: dict | None = None,
                 pass_fds: tuple[int, ...] = (), wrapper: list[str] | None = None,
                 fresh_host_keys: bool = False):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "netsuite.toml"
        self.log_path = self.dir / "twistd.log"
        known = all_listeners()
        wanted = known if listeners is None else listeners
        listen = {name: (["tcp:0:interface=127.0.0.1"] if name in wanted else [])
                  for name in known}
        base = {
            "server": {"hostname": "mx.test", "data_dir": str(self.data_dir)},
            "mail": {"local_domains": ["example.test", "localhost"]},
            "throttle": {"base_delay": 0.05, "max_delay": 0.2},
            "listen": listen,
        }
        #: A database to initialise before the first start (L{TEST_STORE}).
        self._db_init = False
        if TEST_STORE == "postgresql" and "backend" not in (config or {}).get("store", {}):
            from pg import shared_cluster

            base["store"] = {"backend": "postgresql"}
            base["database"] = {"dsn": shared_cluster().new_database()}
            self._db_init = True
        self.config = merge(base, config or {})
        self.env = env or {}
        #: Descriptors the daemon inherits (socket activation), and a command
        #: prefix that ends by exec'ing the rest (so the pid stays twistd's).
        self.pass_fds = pass_fds
        self.wrapper = wrapper or []
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, list[int]] = {}
        #: Let the daemon generate its own SSH host keys (else pre-made ones are copied).
        self.fresh_host_keys = fresh_host_keys

    # -- lifecycle -----------------------------------------------------------

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.config))

    def command(self, *extra: str) -> list[str]:
        return [*self.wrapper, *twistd(), "--nodaemon", "--pidfile=",
                f"--logfile={self.log_path}", "netsuite", "--config", str(self.config_path),
                *extra]

    def start(self, *extra: str, timeout: float = 30.0) -> "Daemon":
        self.write_config()
        if self._db_init:  # (a config error is left for the start to report)
            self.cli("db", "init", check=False)
            self._db_init = False
        ready = self.data_dir / "run" / "listening.json"
        if ready.exists():
            ready.unlink()
        if not self.fresh_host_keys:
            seed_host_keys(self.data_dir)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]))
        env.update(self.env)
        self.proc = subprocess.Popen(self.command(*extra), cwd=self.dir, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, pass_fds=self.pass_fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                raise RuntimeError(f"twistd exited {self.proc.returncode}:\n{out}\n{self.log()}")
            if ready.exists():
                info = json.loads(ready.read_text())
                if info.get("pid") == self.proc.pid:
                    self.ports = info["listen"]
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"twistd did not come up in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def restart(self, *extra: str) -> "Daemon":
        self.stop()
        return self.start(*extra)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- helpers ---------------------------------------------------------------

    def port(self, listener: str) -> int:
        return self.ports[listener][0]

    def cli(self, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        """Run the real C{netsuite} admin command against this daemon's config."""
        self.write_config()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]))
        result = subprocess.run(
            [sys.executable, "-m", "netsuite.cli", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, env=env, cwd=self.dir, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"netsuite {' '.join(args)} failed: {result.stderr}")
        return result

    def add_user(self, name: str, password: str) -> None:
        """
        Add a user through the same PasswordFile code the CLI uses; in the test
        suite (L{CHEAP_HASHES}) with a cheap argon2id hash (L{test_hash}), which
        the daemon verifies with the parameters it carries, as a full-cost one.
        """
        from netsuite.auth.passwdfile import PasswordFile

        passwd = PasswordFile(self.data_dir / "passwd")
        if CHEAP_HASHES:
            passwd.set_hash(name, test_hash(password))
        else:
            passwd.set_password(name, password)

    @property
    def in_postgresql(self) -> bool:
        """Whether this daemon keeps its mail in PostgreSQL (L{TEST_STORE}, or its config)."""
        return self.config.get("store", {}).get("backend") == "postgresql"

    def deliver_local(self, user: str, data: bytes, folder: str = "INBOX",
                      raw: bool = False) -> str:
        """
        Put a message into a user's folder as another delivery agent would, not
        through this daemon: a file in the Maildir, or the rows of the
        PostgreSQL store (its own code, on a connection of its own); its key.
        C{raw}: the bytes exactly as given (CRLF kept), as a file in new/ holds them.
        """
        return self.deliver_many(user, [data], folder, raw)[0]

    def deliver_many(self, user: str, messages: Iterable[bytes], folder: str = "INBOX",
                     raw: bool = False) -> list[str]:
        """L{deliver_local} for each of C{messages}, on one database connection."""
        if self.in_postgresql:
            import psycopg

            from netsuite.store.pg import sql
            from netsuite.store.pg.blobs import PgBlobs

            with psycopg.connect(self.config["database"]["dsn"]) as conn:
                blobs = PgBlobs()
                return [sql.deliver(conn, blobs, user, folder,
                                    data if raw else data.replace(b"\r\n", b"\n"))
                        for data in messages]
        from netsuite.store.maildir import MaildirStore

        store = MaildirStore(self.data_dir / "mail")
        keys = []
        for data in messages:
            delivery = store.delivery(user, folder)
            delivery.write(data)
            keys.append(delivery._finish())
        return keys

    def maildir(self, user: str, folder: str = "") -> Path:
        path = self.data_dir / "mail" / user
        return path / f".{folder}" if folder else path

    def messages(self, user: str, folder: str = "") -> list[bytes]:
        """Every message in a user's folder (new/ and cur/, or its rows), oldest first."""
        if self.config.get("store", {}).get("backend") == "postgresql":
            import psycopg

            with psycopg.connect(self.config["database"]["dsn"]) as conn:
                rows = conn.execute(
                    "SELECT b.body FROM messages m JOIN folders f ON f.id = m.folder_id "
                    "JOIN accounts a ON a.id = f.account_id JOIN blobs b ON "
                    "b.hash = m.content_hash WHERE a.name = %s AND f.name = %s ORDER BY m.uid",
                    (user, folder or "INBOX")).fetchall()
            return [bytes(r[0]) for r in rows]
        box = self.maildir(user, folder)
        files = []
        for sub in ("new", "cur"):
            if (box / sub).is_dir():
                files.extend(p for p in (box / sub).iterdir() if not p.name.startswith("."))
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def tmp_files(self, user: str, folder: str = "") -> list[Path]:
        """What is left in the Maildir's tmp/ (mail in PostgreSQL: nothing is written there)."""
        tmp = self.maildir(user, folder) / "tmp"
        if self.in_postgresql and not tmp.exists():
            return []
        return list(tmp.iterdir())

    def system_flags(self, user: str, folder: str = "") -> list[str]:
        """
        Each message's system flags as Maildir letters, sorted (C{"ST"}): from the
        file names in cur/ (a file in new/: C{""}), or from the rows; by UID or name.
        """
        if self.in_postgresql:
            import psycopg

            from netsuite.store.folder import FLAG_TO_LETTER

            with psycopg.connect(self.config["database"]["dsn"]) as conn:
                rows = conn.execute(
                    "SELECT m.flags FROM messages m JOIN folders f ON f.id = m.folder_id "
                    "JOIN accounts a ON a.id = f.account_id WHERE a.name = %s "
                    "AND f.name = %s ORDER BY m.uid", (user, folder or "INBOX")).fetchall()
            return ["".join(sorted(FLAG_TO_LETTER[f.lower()] for f in r[0])) for r in rows]
        box = self.maildir(user, folder)
        out = [(p.name, "") for p in (box / "new").iterdir()] if (box / "new").is_dir() else []
        if (box / "cur").is_dir():
            out += [(p.name, p.name.partition(":2,")[2]) for p in (box / "cur").iterdir()]
        return [letters for _name, letters in sorted(out)]

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        return predicate()

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_steady(read, polls: int = 3, interval: float = 0.2, timeout: float = 15.0) -> bool:
    """
    True once C{read()} has returned the same non-zero value C{polls} times in a row:
    a queue that filled up and stopped growing, a process that stopped writing.
    False at C{timeout}.
    """
    last, same = read(), 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        same = same + 1 if now and now == last else 0
        if same >= polls:
            return True
        last = now
    return False
