"""
The verification cache: bounds and expiry with a fake clock, the wrapper's
rules (failures never cached, a changed token is a miss, one verification for
concurrent identical logins), and on the real daemon: a repeated IMAP/POP3
login is served from the cache, and `netsuite user passwd`, `netsuite user del`
and the throttle's lock all still win over it.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import tempfile

import pytest
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer

from netsuite.auth import passwdfile
from netsuite.auth.cache import CachingChecker, ICacheTokenSource, VerificationCache, cached


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl():
    clock = Clock()
    cache = VerificationCache(size=10, ttl=60, clock=clock)
    d = cache.digest("alice", b"tok", b"pw")
    cache.put(d, "alice")
    clock.now += 59.9
    assert cache.get(d) == "alice"
    clock.now += 0.1
    assert cache.get(d) is None
    assert len(cache) == 0


def test_bounded_least_recently_used_out_first():
    clock = Clock()
    cache = VerificationCache(size=3, ttl=60, clock=clock)
    digests = [cache.digest(f"u{i}", b"t", b"pw") for i in range(4)]
    for i, d in enumerate(digests[:3]):
        cache.put(d, f"u{i}")
    assert cache.get(digests[0]) == "u0"  # now the most recently used
    cache.put(digests[3], "u3")
    assert len(cache) == 3
    assert cache.get(digests[1]) is None  # the least recently used went
    assert [cache.get(d) for d in (digests[0], digests[2], digests[3])] == ["u0", "u2", "u3"]


def test_size_or_ttl_zero_turns_it_off():
    cache = VerificationCache(size=0, ttl=60)
    d = cache.digest("a", b"", b"p")
    cache.put(d, "a")
    assert cache.get(d) is None
    checker = passwdfile.PasswordFileChecker("/nonexistent/passwd")
    assert cached(checker, 0, 60) is checker
    assert cached(checker, 10, 0) is checker
    assert isinstance(cached(checker, 10, 60), CachingChecker)


def test_digest_is_keyed_and_never_the_password():
    a = VerificationCache(10, 60, key=b"k1" * 16)
    b = VerificationCache(10, 60, key=b"k2" * 16)
    secret = b"correct horse battery staple"
    da = a.digest("alice", b"$argon2id$tok", secret)
    assert da != b.digest("alice", b"$argon2id$tok", secret)  # per-process key
    assert secret not in da
    import hashlib

    assert da not in (hashlib.sha256(secret).digest(), hashlib.sha256(b"alice" + secret).digest())
    # Fields are length-prefixed: moving a byte between name and password is another key.
    assert a.digest("alic", b"e", b"pw") != a.digest("alice", b"", b"pw")


@implementer(ICredentialsChecker, ICacheTokenSource)
class FakeChecker:
    """Accepts one password per user; counts verifications; answers when told."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self):
        self.passwords = {"alice": b"right"}
        self.tokens = {"alice": b"v1"}
        self.calls = 0
        self.pending: list[tuple[defer.Deferred, object]] = []

    def cache_token(self, username):
        return self.tokens.get(username)

    def requestAvatarId(self, creds):
        self.calls += 1
        d = defer.Deferred()
        self.pending.append((d, creds))
        return d

    def answer_all(self):
        pending, self.pending = self.pending, []
        for d, creds in pending:
            name = creds.username.decode()
            if self.passwords.get(name) == creds.password:
                d.callback(name)
            else:
                d.errback(error.UnauthorizedLogin("no"))


def _creds(user: bytes, password: bytes):
    return credentials.UsernamePassword(user, password)


def _result(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "not answered yet"
    return out[0]


def test_wrapper_caches_success_only_and_follows_the_token():
    inner = FakeChecker()
    checker = CachingChecker(inner, VerificationCache(10, 60, clock=Clock()))
    # A failure is not remembered: the second wrong try is verified again.
    for _ in range(2):
        d = checker.requestAvatarId(_creds(b"alice", b"wrong"))
        inner.answer_all()
        assert isinstance(_result(d).value, error.UnauthorizedLogin)
    assert inner.calls == 2
    d = checker.requestAvatarId(_creds(b"alice", b"right"))
    inner.answer_all()
    assert _result(d) == "alice" and inner.calls == 3
    assert _result(checker.requestAvatarId(_creds(b"alice", b"right"))) == "alice"
    assert inner.calls == 3 and checker.hits == 1  # served from the cache
    # A wrong password after a cached success still goes to the checker, and fails.
    d = checker.requestAvatarId(_creds(b"alice", b"wrong"))
    assert inner.calls == 4
    inner.answer_all()
    assert isinstance(_result(d).value, error.UnauthorizedLogin)
    # The password changed (new token): the old entry is dead at once.
    inner.tokens["alice"], inner.passwords["alice"] = b"v2", b"new"
    d = checker.requestAvatarId(_creds(b"alice", b"right"))
    assert inner.calls == 5
    inner.answer_all()
    assert isinstance(_result(d).value, error.UnauthorizedLogin)
    # The user is gone (no token): asked, never served from the cache.
    del inner.tokens["alice"]
    d = checker.requestAvatarId(_creds(b"alice", b"new"))
    assert inner.calls == 6


def test_concurrent_identical_logins_share_one_verification():
    inner = FakeChecker()
    checker = CachingChecker(inner, VerificationCache(10, 60, clock=Clock()))
    ds = [checker.requestAvatarId(_creds(b"alice", b"right")) for _ in range(5)]
    wrong = checker.requestAvatarId(_creds(b"alice", b"wrong"))
    assert inner.calls == 2
    ds[1].cancel()  # one client hangs up; the others still get the answer
    inner.answer_all()
    assert [_result(d) for d in (ds[0], *ds[2:])] == ["alice"] * 4
    assert isinstance(_result(ds[1]).value, defer.CancelledError)
    assert isinstance(_result(wrong).value, error.UnauthorizedLogin)


def test_all_waiters_gone_cancels_the_verification():
    inner = FakeChecker()
    checker = CachingChecker(inner, VerificationCache(10, 60, clock=Clock()))
    d = checker.requestAvatarId(_creds(b"alice", b"right"))
    d.cancel()
    assert inner.pending[0][0].called  # the inner Deferred was cancelled too
    _result(d).trap(defer.CancelledError)
    checker.requestAvatarId(_creds(b"alice", b"right"))
    assert inner.calls == 2  # a fresh verification, not the cancelled one


def test_passwd_file_change_is_seen_even_with_the_same_size_and_mtime():
    """An edit that keeps the size and puts mtime back: the old (mtime, size) stamp missed it."""
    directory = tempfile.mkdtemp(prefix="netsuite-cache-")
    try:
        path = os.path.join(directory, "passwd")
        db = passwdfile.PasswordFile(passwdfile.Path(path))
        db.set_password("alice", "one")
        text = open(path).read()
        st = os.stat(path)
        old = os.stat(path).st_mtime_ns - 10 * 10**9
        os.utime(path, ns=(old, old))  # long ago: past the racy window
        reader = passwdfile.PasswordFile(passwdfile.Path(path))
        first = reader.hash_for("alice")
        assert first is not None
        other = passwdfile.hash_password("two")
        assert len(other) == len(first)
        with open(path, "r+") as f:  # in place: same inode, same size
            f.write(text.replace(first, other))
        os.utime(path, ns=(old, old))
        assert os.stat(path).st_size == st.st_size
        assert reader.hash_for("alice") == other
    finally:
        shutil.rmtree(directory)


# -- the real daemon ---------------------------------------------------------------------------

CONFIG = {"server": {"allow_plaintext_auth": True}}


def cache_hits(daemon, user: str) -> int:
    return len(re.findall(rf"login verified from cache: user={user}\b", daemon.log()))


def imap_login(daemon, user: str, password: str) -> bool:
    with imaplib.IMAP4("127.0.0.1", daemon.port("imap"), timeout=30) as c:
        try:
            c.login(user, password)
        except imaplib.IMAP4.error:
            return False
        c.logout()
        return True


def pop3_login(daemon, user: str, password: str) -> bool:
    c = poplib.POP3("127.0.0.1", daemon.port("pop3"), timeout=30)
    try:
        c.user(user)
        c.pass_(password)
    except poplib.error_proto:
        return False
    finally:
        try:
            c.quit()
        except (poplib.error_proto, OSError):
            pass
    return True


@pytest.mark.parametrize("login", [imap_login, pop3_login], ids=["imap", "pop3"])
def test_second_login_is_served_from_cache(make_daemon, login):
    d = make_daemon(CONFIG, ["imap", "pop3"], users={"alice": "s3cret"})
    assert login(d, "alice", "s3cret")
    assert d.wait_for(lambda: "login: protocol=" in d.log())
    assert cache_hits(d, "alice") == 0  # the first login ran argon2
    assert login(d, "alice", "s3cret")
    assert d.wait_for(lambda: cache_hits(d, "alice") == 1), d.log()
    # A wrong password after the cached success: refused.
    assert not login(d, "alice", "s3cretX")
    assert cache_hits(d, "alice") == 1
    assert "s3cret" not in d.log()


def test_passwd_and_del_invalidate_at_once(make_daemon):
    d = make_daemon(CONFIG, ["imap", "pop3"], users={"alice": "old-pw"})
    assert imap_login(d, "alice", "old-pw")
    assert imap_login(d, "alice", "old-pw")
    assert d.wait_for(lambda: cache_hits(d, "alice") == 1)
    d.cli("user", "passwd", "alice", "--password-stdin", input="new-pw\n")
    assert not imap_login(d, "alice", "old-pw")
    assert not pop3_login(d, "alice", "old-pw")
    assert imap_login(d, "alice", "new-pw")
    assert pop3_login(d, "alice", "new-pw")  # now from the cache
    assert d.wait_for(lambda: cache_hits(d, "alice") == 2)
    d.cli("user", "del", "alice")
    assert not imap_login(d, "alice", "new-pw")
    assert not pop3_login(d, "alice", "new-pw")
    assert cache_hits(d, "alice") == 2


def test_a_locked_user_is_refused_even_with_a_cached_password(make_daemon):
    config = {**CONFIG, "throttle": {"base_delay": 0.01, "max_delay": 0.02, "lock_after": 3,
                                     "lock_seconds": 300}}
    d = make_daemon(config, ["imap"], users={"alice": "s3cret"})
    assert imap_login(d, "alice", "s3cret")
    for _ in range(3):
        assert not imap_login(d, "alice", "nope")
    assert not imap_login(d, "alice", "s3cret")
    assert d.wait_for(lambda: "login refused, locked" in d.log())
    assert cache_hits(d, "alice") == 0
