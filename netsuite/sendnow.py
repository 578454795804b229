"""
Hand a reply to the kernel in the reactor turn that read its command.

Twisted's C{FileDescriptor.write} only buffers and asks the reactor to watch
the socket for writing; the bytes leave on the next turn, after another
C{epoll_wait} and two C{epoll_ctl} calls.  For a request/response protocol
answering one small command at a time (POP3 RETR of ordinary mail) that
extra turn costs as much as the command itself.  L{send_now} runs the
descriptor's own C{doWrite} at the end of C{dataReceived} instead, so every
reply to what one read brought in still goes out in one C{send}; whatever the
kernel does not take stays buffered and the reactor sends it as before.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor


def _descriptor(transport: Any) -> FileDescriptor | None:
    """The socket under any protocol wrappers (policies.ProtocolWrapper, TLS)."""
    for _ in range(8):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def send_now(transport: Any) -> None:
    """
    Write out what C{transport} buffered, now, if that is safe: connected,
    not closing (the reactor must see C{doWrite}'s CONNECTION_DONE itself) and
    no producer (C{doWrite} would resume it from inside our caller).
    """
    fd = _descriptor(transport)
    if (fd is None or not fd.connected or fd.disconnecting or fd._writeDisconnecting
            or fd.producer is not None):
        return
    if not fd._tempDataLen and len(fd.dataBuffer) == fd.offset:
        return
    # An error (the peer went away) leaves the descriptor registered for writing:
    # the reactor's next doWrite meets it again and closes the connection.
    fd.doWrite()
