"""argon2id verification in reused memory gives argon2-cffi's answers, on their hashes."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher

from netsuite.auth import verifier


def test_same_answers_as_argon2_cffi():
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=2)
    for password in (b"", b"s3cret", "pässwörd".encode(), b"\xff\xfe not utf-8", b"x" * 500):
        hashed = hasher.hash(password)
        assert verifier._verify_reusing(hashed, password) is True  # our own path, not the fallback
        assert verifier.verify_hash(hashed, password) is True
        assert verifier.verify_hash(hashed, password + b"!") is False
        assert verifier.verify_hash(hashed, password[:-1]) is False or not password
    default = PasswordHasher().hash("pw")  # the parameters the password file uses
    assert verifier.verify_hash(default, b"pw") and not verifier.verify_hash(default, b"pW")


def test_other_hashes_go_to_the_library():
    argon2i = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                             type=__import__("argon2").Type.I).hash("pw")
    assert verifier.verify_hash(argon2i, b"pw") and not verifier.verify_hash(argon2i, b"px")
    for broken in ("", "$argon2id$", "$argon2id$v=19$m=1024,t=1,p=1$!!!$!!!", "plain",
                   "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$"):
        assert verifier.verify_hash(broken, b"pw") is False


def test_the_block_is_reused_in_a_burst_and_freed_after():
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    hashed = hasher.hash("pw")
    seen = []

    def in_thread():
        verifier._verify_reusing(hashed, b"pw")
        first = verifier._local.block
        verifier._verify_reusing(hashed, b"pw")
        seen.append(first is verifier._local.block and first is not None)
        verifier._semaphore.waiting.clear()
        verifier._run(verifier.verify_hash, hashed, b"pw")  # nobody waiting: freed
        seen.append(verifier._local.block is None)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(30)
    assert seen == [True, True]


def test_no_memory_for_a_block_falls_back_to_the_library(monkeypatch):
    hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")

    def no_memory(size):
        raise MemoryError

    monkeypatch.setattr(verifier, "_new_block", no_memory)
    monkeypatch.setattr(verifier._local, "block", None, raising=False)
    assert verifier.verify_hash(hashed, b"pw") is True
    assert verifier.verify_hash(hashed, b"px") is False
