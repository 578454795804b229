"""
utmp and wtmp records for TELNET sessions, so C{who} and C{last} show them,
as C{login} writes them for telnetd.

glibc's C{pututxline} and C{updwtmpx} through ctypes (Linux, x86-64 and
aarch64 layout: 384-byte C{struct utmpx}).  Best effort: on another
platform, without permission or without the files, nothing is written and
the session goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import sys
import time

from twisted.logger import Logger

log = Logger(namespace="netsuite.telnet")

USER_PROCESS = 7
DEAD_PROCESS = 8


class Utmpx(ctypes.Structure):
    _fields_ = [
        ("ut_type", ctypes.c_short),
        ("ut_pid", ctypes.c_int),
        ("ut_line", ctypes.c_char * 32),
        ("ut_id", ctypes.c_char * 4),
        ("ut_user", ctypes.c_char * 32),
        ("ut_host", ctypes.c_char * 256),
        ("e_termination", ctypes.c_short),
        ("e_exit", ctypes.c_short),
        ("ut_session", ctypes.c_int32),
        ("tv_sec", ctypes.c_int32),
        ("tv_usec", ctypes.c_int32),
        ("ut_addr_v6", ctypes.c_int32 * 4),
        ("reserved", ctypes.c_char * 20),
    ]


def _libc():
    if not sys.platform.startswith("linux") or ctypes.sizeof(Utmpx) != 384:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.pututxline.restype = ctypes.c_void_p
        libc.pututxline.argtypes = [ctypes.POINTER(Utmpx)]
        libc.utmpxname.argtypes = [ctypes.c_char_p]
        libc.updwtmpx.argtypes = [ctypes.c_char_p, ctypes.POINTER(Utmpx)]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _entry(kind: int, pid: int, tty: str, user: str, host: str) -> Utmpx:
    line = tty.removeprefix("/dev/")
    entry = Utmpx()
    entry.ut_type = kind
    entry.ut_pid = pid
    entry.ut_line = line.encode()[:32]
    entry.ut_id = line.removeprefix("pts/").encode()[-4:]
    entry.ut_user = user.encode("utf-8", "replace")[:32]
    entry.ut_host = host.encode("utf-8", "replace")[:256]
    entry.ut_session = pid
    now = time.time()
    entry.tv_sec = int(now)
    entry.tv_usec = int((now % 1) * 1e6)
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = b""
    if packed:
        words = (packed + bytes(16))[:16]
        for i in range(4):
            entry.ut_addr_v6[i] = int.from_bytes(words[4 * i:4 * i + 4], sys.byteorder,
                                                 signed=True)
    return entry


class Recorder:
    """Writes login and logout records to one utmp and one wtmp file."""

    def __init__(self, utmp_file: str, wtmp_file: str, enabled: bool = True):
        self.utmp_file = utmp_file
        self.wtmp_file = wtmp_file
        self.enabled = enabled and _LIBC is not None

    def login(self, pid: int, tty: str, user: str, host: str) -> None:
        self._write(_entry(USER_PROCESS, pid, tty, user, host))

    def logout(self, pid: int, tty: str) -> None:
        self._write(_entry(DEAD_PROCESS, pid, tty, "", ""))

    def _write(self, entry: Utmpx) -> None:
        if not self.enabled:
            return
        try:
            if os.path.exists(self.utmp_file):
                _LIBC.utmpxname(self.utmp_file.encode())
                _LIBC.setutxent()
                if not _LIBC.pututxline(ctypes.byref(entry)):
                    log.debug("utmp: cannot write {file}", file=self.utmp_file)
                _LIBC.endutxent()
            if os.path.exists(self.wtmp_file):
                _LIBC.updwtmpx(self.wtmp_file.encode(), ctypes.byref(entry))
        except OSError as e:
            log.debug("utmp: {error}", error=e)
