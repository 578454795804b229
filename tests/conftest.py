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

import harness  # noqa: E402
from harness import Daemon  # noqa: E402

harness.CHEAP_HASHES = True  # see harness.test_hash
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


#: The mail suite: the modules that deliver, store or read mail.  Each of their
#: tests runs twice, once per store (the C{mail_store} parameter, [maildir] and
#: [postgresql]): every daemon of the postgresql run keeps its mail in
#: PostgreSQL, a fresh database each on one throwaway cluster per xdist worker
#: (L{pg.shared_cluster}).  The rest (FTP, TELNET, SSH, the code checks) never
#: touches the store.  Run once only, on Maildir: tests marked C{maildir_only}
#: (about a backend of the data directory itself: the Maildir store's files,
#: fsyncs, inotify, Dovecot on the same directory; the queue's spool on disk)
#: and the C{test_pg_*} modules, which choose PostgreSQL themselves.
#: C{NETSUITE_TEST_STORE=maildir} (or C{postgresql}) runs one store only.
MAIL_MODULES = ("test_imap", "test_pop3", "test_smtp", "test_lmtp", "test_store", "test_quota",
                "test_queue", "test_mailauth", "test_plaintext_auth", "test_auth", "test_durable",
                "test_shutdown", "test_workers", "test_throttle")
STORES = ("maildir", "postgresql")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "maildir_only: about a backend of the data directory itself (the Maildir "
                   "store's files, fsyncs, inotify, Dovecot on the same directory; the queue's "
                   "spool on disk): not run on PostgreSQL")
    config.addinivalue_line(
        "markers", "xfail_on_postgresql(reason): a known gap of the PostgreSQL store (strict)")


def pytest_xdist_auto_num_workers(config):
    """
    C{-n auto}: three workers per core, at most 8.  A test mostly waits (for
    a twistd start-up, a client, a timeout), so one per core leaves them idle:
    on 2 cores the suite took 10.6 min with 4 workers, 9.1 with 6.
    """
    return max(2, min(8, 3 * (os.cpu_count() or 1)))


def _stores(definition) -> tuple[str, ...]:
    name = definition.path.stem
    chosen = os.environ.get("NETSUITE_TEST_STORE")
    wanted = (chosen,) if chosen in STORES else STORES
    if not name.startswith(MAIL_MODULES) or name.startswith("test_pg_"):
        return ()
    if definition.get_closest_marker("maildir_only") is not None:
        return tuple(s for s in wanted if s == "maildir")
    return wanted


def pytest_generate_tests(metafunc):
    stores = _stores(metafunc.definition)
    if stores:
        metafunc.parametrize("mail_store", stores, indirect=True, scope="module")


def pytest_collection_modifyitems(config, items):
    """With NETSUITE_TEST_STORE=postgresql only the PostgreSQL runs of the mail suite."""
    if os.environ.get("NETSUITE_TEST_STORE") != "postgresql":
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("mail_store") == "postgresql"
        (keep if on_pg else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="module", autouse=True)
def mail_store(request) -> str:
    """
    The store this module's daemons keep their mail in (L{harness.TEST_STORE}),
    a parameter of the mail suite's tests.  A module-scoped fixture that starts
    a daemon must ask for it, so that it is started again for the second store.
    """
    store = getattr(request, "param", "maildir")
    harness.TEST_STORE = store
    yield store
    harness.TEST_STORE = "maildir"


@pytest.fixture(autouse=True)
def _xfail_on_postgresql(request, mail_store):
    marker = request.node.get_closest_marker("xfail_on_postgresql")
    if marker is not None and mail_store == "postgresql":
        request.applymarker(pytest.mark.xfail(strict=True, reason=marker.args[0]))
