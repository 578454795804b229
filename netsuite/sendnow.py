"""
Hand a reply to the kernel in the reactor turn that read its command.

Twisted's C{FileDescriptor.write} only buffers and asks the reactor to watch
the socket for writing; the bytes leave on the next turn, after another
C{epoll_wait} and two C{epoll_ctl} calls.  For a request/response protocol
answering one small command at a time (POP3 RETR of ordinary mail) that
extra turn costs as much as the command itself.

L{write_now} sends a reply straight to a plain TCP socket when nothing is
queued before it (what the kernel does not take is queued as usual);
L{send_now}, at the end of C{dataReceived}, runs the descriptor's own
C{doWrite} for whatever else the read's commands wrote, so it too leaves in
one C{send} in this turn.  Anything unusual (TLS, a producer, a closing
connection, a wrapper that changes writes) falls back to Twisted's path.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.policies import ProtocolWrapper

_PASS_THROUGH = ProtocolWrapper.write


def _descriptor(transport: Any) -> FileDescriptor | None:
    """The socket under any protocol wrappers (policies.ProtocolWrapper, TLS)."""
    for _ in range(8):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def _writable(fd: FileDescriptor) -> bool:
    """Connected, not closing (the reactor must see C{doWrite}'s CONNECTION_DONE
    itself) and no producer (C{doWrite} would resume it from inside our caller)."""
    return bool(fd.connected and not fd.disconnecting and not fd._writeDisconnecting
                and fd.producer is None)


def send_now(transport: Any) -> None:
    """Write out what C{transport} buffered, now, if that is safe (see L{_writable})."""
    fd = _descriptor(transport)
    if fd is None or not _writable(fd):
        return
    if not fd._tempDataLen and len(fd.dataBuffer) == fd.offset:
        return
    # An error (the peer went away) leaves the descriptor registered for writing:
    # the reactor's next doWrite meets it again and closes the connection.
    fd.doWrite()


def _plain_socket(transport: Any) -> FileDescriptor | None:
    """The TCP socket if every layer above it passes writes through unchanged."""
    for _ in range(8):
        if isinstance(transport, FileDescriptor):
            return None if getattr(transport, "TLS", False) else transport
        if type(transport).write is not _PASS_THROUGH:
            return None  # TLS, or a wrapper that counts or changes what is written
        transport = getattr(transport, "transport", None)
    return None


def write_now(transport: Any, data: bytes) -> None:
    """C{transport.write(data)}, sent at once when nothing is queued before it."""
    fd = _plain_socket(transport)
    if (fd is None or not _writable(fd) or fd._tempDataLen
            or len(fd.dataBuffer) != fd.offset):
        transport.write(data)
        return
    sent = fd.writeSomeData(data)
    if isinstance(sent, int) and 0 <= sent:
        if sent < len(data):
            transport.write(data[sent:])
        return
    # The peer went away: queue it, so the reactor's doWrite meets the error
    # and closes the connection the usual way.
    transport.write(data)
