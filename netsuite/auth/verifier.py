"""
Where argon2id verifications run: a few at once, on threads of their own, in
working memory that is reused through a burst of logins.

A profile of 50 TELNET first logins (perf, 2 cores) put a third of the
server's CPU in the kernel: every verification mallocs its 64 MiB (an mmap),
faults in and zeroes 16384 fresh pages, and unmaps them again.  libargon2 takes
an allocator in its context, so here each verifying thread keeps its block
while more verifications wait and frees it when the burst is over: measured
alone, 66 ms instead of 89 ms per verification with two at once (130 instead
of 170 ms of CPU).  Same hash, same parameters, same result: the hash string
is parsed and compared here, anything unusual goes to argon2-cffi's own verify.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import mmap
import os
import threading
from collections.abc import Callable

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

#: argon2id verifications at once: each takes 64 MiB and ~0.13 s of CPU over
#: its 4 lanes, so a burst of logins queues here rather than take memory and
#: every thread; as many as there are cores keeps them all busy (2 cores: 2 at
#: once verify as many per second as 4 did).
MAX_CONCURRENT = max(2, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 2))

_hasher = PasswordHasher()
_local = threading.local()

try:
    from _argon2_cffi_bindings import ffi, lib  # type: ignore[import-untyped]

    @ffi.callback("int(uint8_t **, size_t)", error=-22)
    def _allocate(memory, size):
        block = getattr(_local, "block", None)
        if block is None or len(block[0]) < size:
            try:
                block = _local.block = _new_block(size)
            except (MemoryError, OSError):
                # *memory stays NULL: libargon2 fails with ARGON2_MEMORY_ALLOCATION_ERROR
                # (-22), and the library's own path gets its turn.
                return -22
        memory[0] = block[1]
        return 0

    @ffi.callback("void(uint8_t *, size_t)")
    def _free(memory, size):
        pass  # kept for the next verification on this thread (libargon2 wiped it)
except Exception:  # no cffi callbacks here (W^X policy, other bindings): the library's path
    ffi = lib = None


def _new_block(size: int):
    """
    Anonymous memory that a fork (a pty session starting) does not share: else
    each fork write-protects the block under a running verification, and
    argon2 takes a copy-on-write fault on every one of its pages.
    """
    area = mmap.mmap(-1, size)
    dontfork = getattr(mmap, "MADV_DONTFORK", None)
    if dontfork is not None:
        area.madvise(dontfork)
    return area, ffi.from_buffer("uint8_t[]", area)


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def verify_hash(hashed: str, password: bytes) -> bool:
    """
    Whether C{password} matches the argon2 hash C{hashed}: argon2-cffi's
    answer, computed in this thread's reusable block where the hash is the
    plain C{$argon2id$v=19$m=,t=,p=$salt$hash} form.
    """
    try:
        return _verify_reusing(hashed, password)
    except _Unusual:
        try:
            return _hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False


class _Unusual(Exception):
    """Not a hash this module computes itself."""


def _verify_reusing(hashed: str, password: bytes) -> bool:
    if lib is None:
        raise _Unusual
    fields = hashed.split("$")
    if len(fields) != 6 or fields[1] != "argon2id":
        raise _Unusual
    try:
        params = extract_parameters(hashed)
        salt, digest = _b64(fields[4]), _b64(fields[5])
    except (InvalidHashError, binascii.Error, ValueError):
        raise _Unusual from None
    if params.type is not Type.ID or params.version != 19 or len(digest) < 4 or len(salt) < 8:
        raise _Unusual
    out = ffi.new("uint8_t[]", len(digest))
    pwd = ffi.new("uint8_t[]", password or b"\0")
    c_salt = ffi.new("uint8_t[]", salt)
    ctx = ffi.new("argon2_context *", {
        "out": out, "outlen": len(digest), "pwd": pwd, "pwdlen": len(password),
        "salt": c_salt, "saltlen": len(salt), "secret": ffi.NULL, "secretlen": 0,
        "ad": ffi.NULL, "adlen": 0, "t_cost": params.time_cost, "m_cost": params.memory_cost,
        "lanes": params.parallelism, "threads": params.parallelism, "version": params.version,
        "allocate_cbk": _allocate, "free_cbk": _free, "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    try:
        if lib.argon2_ctx(ctx, lib.Argon2_id) != lib.ARGON2_OK:
            raise _Unusual  # let the library say what is wrong with it
        return hmac.compare_digest(ffi.buffer(out)[:], digest)
    finally:
        ffi.memmove(pwd, b"\0" * len(password), len(password))


# -- the threads ---------------------------------------------------------------------------

_semaphore = defer.DeferredSemaphore(MAX_CONCURRENT)
_pool: ThreadPool | None = None


class _DaemonThread(threading.Thread):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _VerifierPool(ThreadPool):
    """Its threads never hold up the exit of a process whose reactor did not shut down."""

    threadFactory = _DaemonThread


def _get_pool(reactor) -> ThreadPool:
    """
    Threads of their own, not the reactor's 64 shared ones: at most
    L{MAX_CONCURRENT} threads ever hold a verification block, and a burst of
    logins never takes the threads that fsync deliveries.
    """
    global _pool
    if _pool is None:
        _pool = _VerifierPool(0, MAX_CONCURRENT, "netsuite-argon2")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_pool)
    return _pool


def _stop_pool() -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.stop()


def _run(function: Callable[..., bool], *args) -> bool:
    try:
        return function(*args)
    finally:
        if not _semaphore.waiting:  # the burst is over: give the memory back
            _local.block = None


def run(function: Callable[..., bool], *args, reactor=None) -> defer.Deferred:
    """
    C{function(*args)} on a verifying thread, when one of L{MAX_CONCURRENT} is
    free; cancelling it while it waits for one means it never runs.
    """
    if reactor is None:
        from twisted.internet import reactor
    return _semaphore.run(threads.deferToThreadPool, reactor, _get_pool(reactor), _run,
                          function, *args)
