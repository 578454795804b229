"""
A throwaway PostgreSQL cluster for tests: C{initdb} and C{pg_ctl} run as the
C{postgres} user (the tests run as root; PostgreSQL refuses to run as root),
listening only on a Unix socket in a temporary directory (C{listen_addresses=''}),
removed at the end.  One cluster per test session; every test takes a fresh
database of its own (L{Cluster.new_database}) so tests do not see each other's rows.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tools import need_file

#: Debian's PostgreSQL 15 (.ci/apt-packages.txt installs postgresql-15).
BINDIR = Path("/usr/lib/postgresql/15/bin")
PORT = 5432  # only names the socket file (.s.PGSQL.5432): nothing listens on TCP


def _runas() -> dict:
    """subprocess arguments that run a program as C{postgres} when we are root."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


class Cluster:
    """One C{initdb}'d data directory and the server running on it."""

    def __init__(self) -> None:
        need_file(str(BINDIR / "initdb"), "postgresql-15")
        self.dir = Path(tempfile.mkdtemp(prefix="netsuite-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir
        self.log = self.dir / "postgres.log"
        self._runas = _runas()
        if self._runas:
            os.chown(self.dir, self._runas["user"], self._runas["group"])
        self._databases = 0
        atexit.register(self.destroy)  # a run cut short still stops its server
        self._run("initdb", "--pgdata", str(self.data), "--auth=trust", "--username=postgres",
                  "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                    f"port = {PORT}\n"
                    # a test cluster: durability is not what is tested here
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 200\nshared_buffers = 32MB\n")
        self.start()
        #: The template every test database is copied from (created once).
        self.execute("CREATE DATABASE netsuite_template")

    def _run(self, program: str, *args: str, check: bool = True
             ) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BINDIR / program), *args], capture_output=True, text=True,
                              timeout=60, cwd=self.dir, **self._runas)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}\n{log}")
        return done

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "status", "--pgdata", str(self.data),
                         check=False).returncode == 0

    def start(self) -> None:
        self._run("pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log),
                  "--wait", "--timeout=30")

    def stop(self) -> None:
        """A fast stop: open connections are cut (what a crashed database looks like)."""
        self._run("pg_ctl", "stop", "--pgdata", str(self.data), "--mode=fast", "--wait",
                  "--timeout=30", check=False)

    def destroy(self) -> None:
        if not self.dir.exists():
            return
        if self.running:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={PORT} user=postgres dbname={dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql (as a client would); its unaligned output."""
        result = subprocess.run(
            [str(BINDIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(PORT), "-U", "postgres", "-d", dbname,
             "-c", sql], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"psql {sql!r}: {result.stderr}")
        return result.stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database (a copy of the template); its DSN."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{int(time.monotonic() * 1000) % 100000}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE netsuite_template")
        return self.dsn(name)


_shared: Cluster | None = None


def shared_cluster() -> Cluster:
    """One cluster for a run that puts every daemon's mail in PostgreSQL (harness.TEST_STORE)."""
    global _shared
    if _shared is None:
        import atexit

        _shared = Cluster()
        atexit.register(_shared.destroy)
    return _shared
