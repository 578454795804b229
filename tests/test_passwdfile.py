"""The password file checker: argon2id off the reactor, and never too many at once."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

from argon2 import PasswordHasher
from twisted.cred import credentials, error
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from netsuite.auth import passwdfile


class PasswordFileCheckerTests(TestCase):
    def setUp(self):
        directory = tempfile.mkdtemp(prefix="netsuite-passwd-")
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "passwd")
        db = passwdfile.PasswordFile(passwdfile.Path(self.path))
        db.set_password("alice", "right")
        self.checker = passwdfile.PasswordFileChecker(self.path)

    @defer.inlineCallbacks
    def test_right_wrong_and_unknown(self):
        name = yield self.checker.requestAvatarId(credentials.UsernamePassword(b"alice", b"right"))
        self.assertEqual(name, "alice")
        for user, password in ((b"alice", b"wrong"), (b"nobody", b"right"), (b"../x", b"right")):
            with self.assertRaises(error.UnauthorizedLogin):
                yield self.checker.requestAvatarId(credentials.UsernamePassword(user, password))

    def test_set_password_hashes_at_full_cost_and_set_hash_takes_a_hash_made_elsewhere(self):
        db = passwdfile.PasswordFile(passwdfile.Path(self.path))
        # argon2id at its full cost: 64 MiB, 3 passes (what `netsuite user add` writes).
        self.assertTrue(db.hash_for("alice").startswith("$argon2id$v=19$m=65536,t=3,p=4$"))
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("elsewhere")
        db.set_hash("bob", cheap)
        self.assertEqual(passwdfile.PasswordFile(passwdfile.Path(self.path)).hash_for("bob"), cheap)
        self.assertTrue(passwdfile.verify(cheap, "elsewhere"))
        for bad in ("plain-text", cheap + "\nmallory:" + cheap, "$argon2id$x:y"):
            with self.assertRaises(passwdfile.PasswordFileError):
                db.set_hash("bob", bad)
        self.assertEqual(passwdfile.PasswordFile(passwdfile.Path(self.path)).hash_for("bob"), cheap)

    @defer.inlineCallbacks
    def test_a_burst_of_logins_is_verified_a_few_at_a_time(self):
        active, peak = [0], [0]
        lock = threading.Lock()
        real = passwdfile.verify

        def counting_verify(hashed, password):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            try:
                return real(hashed, password)
            finally:
                with lock:
                    active[0] -= 1

        self.patch(passwdfile, "verify", counting_verify)
        reactor.suggestThreadPoolSize(32)
        attempts = [self.checker.requestAvatarId(credentials.UsernamePassword(b"alice", b"x"))
                    for _ in range(16)]
        results = yield defer.DeferredList(attempts, consumeErrors=True)
        self.assertTrue(all(not ok for ok, _ in results))
        self.assertLessEqual(peak[0], passwdfile.MAX_CONCURRENT_VERIFY)
        self.assertGreater(peak[0], 1)  # still parallel, just bounded
