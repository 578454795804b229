"""
SFTP (version 3, as OpenSSH's client speaks it) on the user's FTP root.

Every path goes through the FTP avatar's jail (L{netsuite.ftp.shell.JailedShell}):
symlinks are followed and must stay inside the root, C{..} stops at the root,
and uploads in progress are hidden.  A file opened for writing with TRUNC (or
created) is written under a temporary name and renamed over the final name
only when the client closes it, as an FTP STOR is; a session that ends before
the close throws it away.  Reads and writes run in threads.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from typing import TYPE_CHECKING, Any

from twisted.conch import ls
from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.ftp.shell import TMP_PREFIX, JailedShell, UploadFile

if TYPE_CHECKING:
    from netsuite.ssh.server import SSHUser

log = Logger(namespace="netsuite.ssh")

#: Largest READ answered (OpenSSH asks for 32 KiB at most; the spec allows refusing more).
MAX_READ = 256 * 1024


def segments(path: bytes) -> list[str]:
    """A client path -> segments under the root; C{..} at the root stays there."""
    parts: list[str] = []
    for seg in path.decode("utf-8", "surrogateescape").split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return parts


def _sftp_error(f: Failure) -> Failure:
    """FTP-shell and OS errors -> SFTP status codes (never a traceback to the client)."""
    e = f.value
    if isinstance(e, SFTPError):
        return f
    if isinstance(e, ftp.FileNotFoundError):
        code, msg = filetransfer.FX_NO_SUCH_FILE, "No such file"
    elif isinstance(e, ftp.PermissionDeniedError):
        code, msg = filetransfer.FX_PERMISSION_DENIED, "Permission denied"
    elif isinstance(e, ftp.FileExistsError):
        code, msg = filetransfer.FX_FILE_ALREADY_EXISTS, "File exists"
    elif isinstance(e, ftp.IsADirectoryError):
        code, msg = filetransfer.FX_FAILURE, "Is a directory"
    elif isinstance(e, ftp.FTPCmdError):
        code, msg = filetransfer.FX_FAILURE, "Failure"
    elif isinstance(e, OSError):
        code = {errno.ENOENT: filetransfer.FX_NO_SUCH_FILE,
                errno.ENOTDIR: filetransfer.FX_NO_SUCH_FILE,
                errno.EACCES: filetransfer.FX_PERMISSION_DENIED,
                errno.EPERM: filetransfer.FX_PERMISSION_DENIED,
                errno.ELOOP: filetransfer.FX_PERMISSION_DENIED,
                errno.EEXIST: filetransfer.FX_FILE_ALREADY_EXISTS}.get(
                    e.errno or 0, filetransfer.FX_FAILURE)
        msg = e.strerror or "Failure"
    else:
        log.failure("sftp: unexpected error", f)
        code, msg = filetransfer.FX_FAILURE, "Failure"
    return Failure(SFTPError(code, msg))


def _attrs(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "uid": st.st_uid, "gid": st.st_gid,
            "permissions": st.st_mode, "atime": int(st.st_atime), "mtime": int(st.st_mtime)}


def _apply(fd_or_path: Any, attrs: dict) -> None:
    """SETSTAT/FSETSTAT: size, permissions and times; ownership is not the client's to set."""
    if "size" in attrs:
        os.truncate(fd_or_path, attrs["size"])
    if "permissions" in attrs:
        os.chmod(fd_or_path, attrs["permissions"] & 0o7777 & ~0o6000)
    if "atime" in attrs and "mtime" in attrs:
        os.utime(fd_or_path, (attrs["atime"], attrs["mtime"]))


@implementer(ISFTPFile)
class SFTPFile:
    """An open file: a plain descriptor, or an upload that becomes final on close."""

    def __init__(self, fd: int, upload: UploadFile | None = None, append: bool = False):
        self.fd = fd
        self.upload = upload
        self.append = append
        self.closed = False
        self._writes: set[defer.Deferred] = set()

    def readChunk(self, offset: int, length: int):
        def read() -> bytes:
            data = os.pread(self.fd, min(length, MAX_READ), offset)
            if not data:
                raise EOFError("end of file")
            return data
        return threads.deferToThread(read)

    def writeChunk(self, offset: int, data: bytes):
        def write() -> None:
            view = memoryview(data)
            pos = offset
            while view:
                n = os.write(self.fd, view) if self.append else os.pwrite(self.fd, view, pos)
                view, pos = view[n:], pos + n
            if self.upload is not None:
                self.upload.received += len(data)
        d = threads.deferToThread(write)
        self._writes.add(d)
        d.addBoth(self._written, d)
        return d.addErrback(_sftp_error)

    def _written(self, result, d):
        self._writes.discard(d)
        return result

    def _settled(self) -> defer.Deferred:
        """Every write still in its thread has finished."""
        return defer.DeferredList(list(self._writes), consumeErrors=True)

    def close(self):
        if self.closed:
            return defer.succeed(None)
        self.closed = True

        def finish(_):
            if self.upload is not None:
                return self.upload.close()
            os.close(self.fd)
            return None
        return self._settled().addCallback(finish).addErrback(_sftp_error)

    def abort(self) -> None:
        """The session ended without a close: an upload is thrown away."""
        if self.closed:
            return
        self.closed = True

        def drop(_):
            if self.upload is not None:
                self.upload.abort()
            else:
                os.close(self.fd)
        self._settled().addCallback(drop)

    def getAttrs(self):
        return _attrs(os.fstat(self.fd))

    def setAttrs(self, attrs):
        try:
            _apply(self.fd, attrs)
        except OSError:
            return _sftp_error(Failure())
        return None


class _Directory:
    """OPENDIR's iterator: (name, ls line, attrs) per entry, uploads in progress hidden."""

    def __init__(self, real: str):
        self.real = real
        self._entries = iter(sorted(os.listdir(real)))

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            name = next(self._entries)
            if name.startswith(TMP_PREFIX):
                continue
            try:
                st = os.lstat(os.path.join(self.real, name))
            except OSError:
                continue
            return (name.encode("utf-8", "surrogateescape"),
                    ls.lsLine(name, st).encode("utf-8", "surrogateescape"), _attrs(st))

    def close(self) -> None:
        pass


@implementer(ISFTPServer)
class JailedSFTP:
    """ISFTPServer over one user's L{JailedShell}."""

    def __init__(self, user: "SSHUser"):
        shell = user.realm_avatar(ftp.IFTPShell)
        if not isinstance(shell, JailedShell) or not shell.writable:
            raise SFTPError(filetransfer.FX_PERMISSION_DENIED, "no file root")
        self.user = user
        self.avatar = user
        self.shell = shell

    # Every operation is synchronous metadata work, as in the FTP shell, except
    # file contents (threads, in SFTPFile).
    def _run(self, fn, *args) -> defer.Deferred:
        try:
            result = fn(*args)
        except Exception:
            return defer.fail(_sftp_error(Failure()))
        if isinstance(result, defer.Deferred):
            return result.addErrback(_sftp_error)
        return defer.succeed(result)

    def gotVersion(self, otherVersion, extData):
        return {}

    def openFile(self, filename: bytes, flags: int, attrs):
        path = segments(filename)
        return self._run(self._open, path, flags)

    def _open(self, path: list[str], flags: int):
        shell = self.shell
        if not flags & FXF_WRITE:
            real = shell._real(path)
            if os.path.isdir(real):
                raise ftp.IsADirectoryError("/".join(path))
            return SFTPFile(os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
        entry = shell._entry_path(path)
        exists = os.path.lexists(entry)
        if exists and flags & FXF_EXCL and flags & FXF_CREAT:
            raise ftp.FileExistsError("/".join(path))
        if not exists and not flags & FXF_CREAT:
            raise ftp.FileNotFoundError("/".join(path))
        if flags & FXF_TRUNC or not exists:
            # A whole new content: atomic, as an FTP STOR.
            d = shell.openForWriting(path)
            return d.addCallback(lambda upload: SFTPFile(upload.fd, upload))
        real = shell._real(path)
        if os.path.isdir(real):
            raise ftp.IsADirectoryError("/".join(path))
        mode = os.O_RDWR if flags & FXF_READ else os.O_WRONLY
        append = bool(flags & FXF_APPEND)
        fd = os.open(real, mode | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0))
        return SFTPFile(fd, append=append)

    def removeFile(self, filename: bytes):
        return self._run(self.shell.removeFile, segments(filename))

    def renameFile(self, oldpath: bytes, newpath: bytes):
        old, new = segments(oldpath), segments(newpath)

        def rename():
            # SFTP v3: a rename never replaces an existing name.
            if new and os.path.lexists(self.shell._entry_path(new)):
                raise ftp.FileExistsError("/".join(new))
            return self.shell.rename(old, new)
        return self._run(rename)

    def makeDirectory(self, path: bytes, attrs):
        return self._run(self.shell.makeDirectory, segments(path))

    def removeDirectory(self, path: bytes):
        return self._run(self.shell.removeDirectory, segments(path))

    def openDirectory(self, path: bytes):
        def opendir():
            real = self.shell._real(segments(path))
            if not os.path.isdir(real):
                raise OSError(errno.ENOTDIR, "Not a directory")
            return _Directory(real)
        return self._run(opendir)

    def getAttrs(self, path: bytes, followLinks: bool):
        parts = segments(path)

        def stat():
            if followLinks or not parts:
                return _attrs(os.stat(self.shell._real(parts)))
            return _attrs(os.lstat(self.shell._entry_path(parts)))
        return self._run(stat)

    def setAttrs(self, path: bytes, attrs):
        def setattrs():
            real = self.shell._real(segments(path))
            _apply(real, attrs)
        return self._run(setattrs)

    def readLink(self, path: bytes):
        parts = segments(path)

        def readlink():
            entry = self.shell._entry_path(parts)
            if not statmod.S_ISLNK(os.lstat(entry).st_mode):
                raise OSError(errno.EINVAL, "Not a symbolic link")
            # Shown only as a path inside the jail; a link out reads as denied.
            real = self.shell._real(parts)
            inside = "" if real == self.shell.root else os.path.relpath(real, self.shell.root)
            return ("/" + inside).encode("utf-8", "surrogateescape")
        return self._run(readlink)

    def makeLink(self, linkPath: bytes, targetPath: bytes):
        return defer.fail(SFTPError(filetransfer.FX_OP_UNSUPPORTED,
                                    "symbolic links are not created here"))

    def realPath(self, path: bytes):
        return ("/" + "/".join(segments(path))).encode("utf-8", "surrogateescape")

    def extendedRequest(self, extendedName: bytes, extendedData: bytes):
        raise NotImplementedError(extendedName.decode("ascii", "replace"))


class SFTPServer(filetransfer.FileTransferServer):
    """conch's SFTP protocol; a session that ends discards uploads not yet closed."""

    def connectionLost(self, reason):
        files, self.openFiles = self.openFiles, {}
        filetransfer.FileTransferBase.connectionLost(self, reason)
        for f in files.values():
            abort = getattr(f, "abort", None)
            if abort is not None:
                abort()
            else:
                f.close()
        dirs, self.openDirs = self.openDirs, {}
        for d, _it in dirs.values():
            d.close()

