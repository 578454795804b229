"""Fixtures that start the real daemon; see L{harness.Daemon}."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Every test starts twistd (and CLI) subprocesses: with bytecode writing off (CI's
# environment may set PYTHONDONTWRITEBYTECODE) each one recompiles Twisted and
# netsuite from source, about a third of the suite's time. Compiled files go to a
# cache outside the tree, so the checkout stays clean.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX",
                      str(Path.home() / ".cache" / "netsuite-tests" / "pycache"))

from harness import TEST_STORE, Daemon  # noqa: E402
from pg import Cluster  # noqa: E402
from queue_remote import Remote  # noqa: E402 (aiosmtpd: a test dependency in pyproject.toml)


@pytest.fixture
def make_daemon(tmp_path_factory):
    """Factory: C{make_daemon(config=..., listeners=[...])}, stopped after the test."""
    started: list[Daemon] = []

    def make(config: dict | None = None, listeners: list[str] | None = None,
             start: bool = True, users: dict[str, str] | None = None, **kw) -> Daemon:
        d = Daemon(tmp_path_factory.mktemp("netsuite"), config, listeners, **kw)
        for name, password in (users or {}).items():
            d.add_user(name, password)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def remote():
    """A remote MX on loopback (aiosmtpd, tests/queue_remote.py), stopped after the test."""
    r = Remote().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the whole run (one initdb); see L{pg.Cluster}."""
    cluster = Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    """A fresh database of its own for each test: the DSN to reach it."""
    if not pg_cluster.running:  # a test that stopped it and failed before starting it again
        pg_cluster.start()
    return pg_cluster.new_database()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """
    In CI (CI=true) nothing may be skipped: .ci/run installs every client program,
    so a skip there means a test silently did not run. Locally, skips say why.
    """
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything must run: {reason}"


#: The mail suite: the modules that deliver, store or read mail.  With
#: C{NETSUITE_TEST_STORE=postgresql} (the README's second pass) only they run,
#: every daemon keeping its mail in PostgreSQL; the rest (FTP, TELNET, SSH, the
#: code checks) never touches the store and ran in the first pass.  Also left
#: out then: tests marked C{maildir_only} (about a backend of the data directory
#: itself: the Maildir store's files, fsyncs, inotify, Dovecot on the same
#: directory; the queue's spool on disk) and the C{test_pg_*} modules, which
#: choose PostgreSQL themselves.
MAIL_MODULES = ("test_imap", "test_pop3", "test_smtp", "test_lmtp", "test_store", "test_quota",
                "test_queue", "test_mailauth", "test_plaintext_auth", "test_auth", "test_durable",
                "test_shutdown", "test_workers", "test_throttle")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "maildir_only: about a backend of the data directory itself (the Maildir "
                   "store's files, fsyncs, inotify, Dovecot on the same directory; the queue's "
                   "spool on disk): not run with NETSUITE_TEST_STORE=postgresql")


def pytest_collection_modifyitems(config, items):
    if TEST_STORE != "postgresql":
        return
    keep, drop = [], []
    for item in items:
        name = item.path.stem
        mail = name.startswith(MAIL_MODULES) and not name.startswith("test_pg_")
        (keep if mail and item.get_closest_marker("maildir_only") is None else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
