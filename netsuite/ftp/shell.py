"""
The FTP avatar: a jailed file tree behind Twisted's C{IFTPShell} seam.

Paths arrive as segment lists (Twisted's C{toSegments} has already removed
C{.} and C{..}).  Every path is resolved with symlinks followed and must stay
inside the root, so a link that points out of the tree is treated as if it
did not exist; entries that would be removed or renamed are resolved up to
their parent only, so DELE on a link removes the link, never its target.

Uploads without REST/APPE go to a hidden temporary name in the target folder
and are renamed over the final name only once the transfer completed, so an
interrupted upload never leaves a half file posing as whole.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import stat as statmod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from netsuite.config import ConfigError
from netsuite.durable import disk_full, fsync_dir
from netsuite.ftp.wire import Entry
from netsuite.realm import ANONYMOUS

log = Logger(namespace="netsuite.ftp")

#: Bytes read from disk per write to the data connection.
CHUNK = 256 * 1024
#: Most bytes sent to one data connection in one reactor turn by os.sendfile
#: (a few ms at loopback speed), so that other sessions are not kept waiting
#: longer; the socket is non-blocking, so the kernel takes what its buffer has
#: room for and the rest waits for the next turn.
SENDFILE_MAX = 16 << 20
#: Prefix of in-progress upload names; such files are hidden from listings.
TMP_PREFIX = ".netsuite-upload-"


class INetsuiteFTPShell(ftp.IFTPShell):
    """
    C{IFTPShell} plus what a complete server needs: offsets for REST, append
    and unique names for APPE and STOU, and listing entries with RFC 3659 facts.
    Methods return Deferreds, as C{IFTPShell}'s do.
    """

    writable = Attribute("Whether this session may change the tree (anonymous: no).")

    def entries(path):
        """Deferred list of L{Entry} for a directory, or one for a file."""

    def entry(path):
        """Deferred L{Entry} for one path (for MLST, SIZE, MDTM, STAT)."""

    def openForReading(path, offset=0):
        """Deferred L{IReadFile} positioned at C{offset} (REST)."""

    def openForWriting(path, offset=0, append=False, unique=False):
        """
        Deferred L{IWriteFile} that is also an C{IConsumer}: C{close()} makes
        the upload final, C{abort()} discards it, C{name} and C{received} say
        what is being written.  C{offset} (REST) and C{append} (APPE) write in
        place; C{unique} (STOU) picks a new name beside C{path}.
        """


def _errno_failure(e: OSError, path: list[str]) -> defer.Deferred:
    if e.errno == errno.ELOOP:
        return defer.fail(ftp.PermissionDeniedError("/".join(path)))
    if disk_full(e):
        return defer.fail(StorageFull("/".join(path)))
    if e.errno == errno.ENOTEMPTY:
        return defer.fail(NotEmpty("/".join(path)))
    if e.errno == errno.ENAMETOOLONG:
        return defer.fail(NameTooLong("/".join(path)))
    return ftp.errnoToFailure(e.errno, "/".join(path))


class StorageFull(ftp.FTPCmdError):
    def response(self):
        return f"452 {self.errorMessage}: Insufficient storage space."


class NameTooLong(ftp.FTPCmdError):
    """A name over NAME_MAX or a path over PATH_MAX (ENAMETOOLONG): RFC 959's 553."""

    def response(self):
        # The name itself is not echoed: it is what is too long.
        return ("553 Requested action not taken: file name not allowed "
                "(a name is longer than the file system allows).")


class NotEmpty(ftp.FTPCmdError):
    def response(self):
        return f"550 {self.errorMessage}: Directory not empty."


@implementer(INetsuiteFTPShell)
class JailedShell:
    """
    One user's view of one directory tree.

    @param writable: accounts may change the tree; anonymous visitors may not.
    @param upload_dir: for anonymous visitors, the segments of the one folder
        where new files may be stored (not listed, read, overwritten or deleted).
    """

    def __init__(self, root: Path, writable: bool = True,
                 upload_dir: list[str] | None = None, fsync: bool = True):
        self.root = os.path.realpath(root)
        self.writable = writable
        self.upload_dir = upload_dir
        self.fsync = fsync
        try:
            self.name_max = os.pathconf(self.root, "PC_NAME_MAX")
        except (OSError, ValueError):
            self.name_max = 255

    # -- the jail --------------------------------------------------------------

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _check_names(self, path: list[str]) -> None:
        """
        A segment over NAME_MAX is a bad name (553) before any file call, as
        some calls (C{isdir}, C{realpath}) would hide the ENAMETOOLONG as 'missing'.
        """
        for seg in path:
            if len(os.fsencode(seg)) > self.name_max:
                raise NameTooLong("/".join(path))

    def _real(self, path: list[str]) -> str:
        """The real path for C{path}, symlinks followed; outside the root raises."""
        self._check_names(path)
        for seg in path:
            if not seg or "/" in seg or "\0" in seg or seg in (".", ".."):
                raise ftp.PermissionDeniedError("/".join(path))
            if seg.startswith(TMP_PREFIX):
                raise ftp.FileNotFoundError("/".join(path))  # uploads in progress
        real = self._resolve(path)
        if not self._inside(real):
            raise ftp.PermissionDeniedError("/".join(path))
        return real

    def _resolve(self, path: list[str]) -> str:
        """
        C{os.path.realpath(root/path)} for checked segments, walked from the
        root (already real) so only the segments under it are looked at: one
        C{lstat} per segment instead of one per component of the whole path.
        A symlink on the way hands the rest to C{realpath}; a missing segment
        ends the walk with the rest joined as written, as C{realpath} does.
        """
        current = self.root
        for i, seg in enumerate(path):
            candidate = os.path.join(current, seg)
            try:
                st = os.lstat(candidate)
            except OSError:
                return os.path.join(candidate, *path[i + 1:])
            if statmod.S_ISLNK(st.st_mode):
                return os.path.realpath(os.path.join(candidate, *path[i + 1:]))
            current = candidate
        return current

    def _entry_path(self, path: list[str]) -> str:
        """The path of the entry itself (a final symlink not followed); not the root."""
        if not path:
            raise ftp.PermissionDeniedError("/")
        self._check_names(path)
        parent = self._real(path[:-1])
        name = path[-1]
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise ftp.PermissionDeniedError("/".join(path))
        if name.startswith(TMP_PREFIX):
            raise ftp.FileNotFoundError("/".join(path))
        return os.path.join(parent, name)

    def _in_upload_dir(self, path: list[str]) -> bool:
        return self.upload_dir is not None and path[:-1] == self.upload_dir

    def _is_upload_dir(self, path: list[str]) -> bool:
        return self.upload_dir is not None and path == self.upload_dir

    def _check_writable(self, path: list[str]) -> None:
        if not self.writable:
            raise ftp.PermissionDeniedError("/".join(path))

    def _call(self, path: list[str], fn: Callable[[], Any]) -> defer.Deferred:
        """Run a synchronous file operation, mapping errors to FTP errors."""
        try:
            return defer.succeed(fn())
        except ftp.FTPCmdError as e:
            return defer.fail(e)
        except OSError as e:
            return _errno_failure(e, path)
        except Exception:
            return defer.fail(Failure())

    # -- IFTPShell ------------------------------------------------------------

    def makeDirectory(self, path):
        def mkdir():
            self._check_writable(path)
            os.mkdir(self._entry_path(path), 0o755)
        return self._call(path, mkdir)

    def removeDirectory(self, path):
        def rmdir():
            self._check_writable(path)
            target = self._entry_path(path)
            if not statmod.S_ISDIR(os.lstat(target).st_mode):
                raise ftp.IsNotADirectoryError("/".join(path))
            os.rmdir(target)
        return self._call(path, rmdir)

    def removeFile(self, path):
        def remove():
            self._check_writable(path)
            target = self._entry_path(path)
            if statmod.S_ISDIR(os.lstat(target).st_mode):
                raise ftp.IsADirectoryError("/".join(path))
            os.unlink(target)
        return self._call(path, remove)

    def rename(self, fromPath, toPath):
        def rename():
            self._check_writable(fromPath)
            source = self._entry_path(fromPath)
            os.lstat(source)
            target = self._entry_path(toPath)
            if os.path.isdir(target) and not os.path.isdir(source):
                raise ftp.IsADirectoryError("/".join(toPath))
            os.rename(source, target)
        return self._call(fromPath, rename)

    def access(self, path):
        """May the session change into C{path}?"""
        def check():
            real = self._real(path)
            if not os.path.isdir(real):
                if os.path.exists(real):
                    raise ftp.IsNotADirectoryError("/".join(path))
                raise ftp.FileNotFoundError("/".join(path))
            if not os.access(real, os.X_OK):
                raise ftp.PermissionDeniedError("/".join(path))
        return self._call(path, check)

    def stat(self, path, keys=()):
        d = self.entry(path)
        return d.addCallback(lambda e: [_key(e, k) for k in keys])

    def list(self, path, keys=()):
        d = self.entries(path)
        return d.addCallback(lambda es: [(e.name, [_key(e, k) for k in keys]) for e in es])

    def openForReading(self, path, offset: int = 0):
        def open_():
            if self._is_upload_dir(path[:-1]) or self._in_upload_dir(path):
                raise ftp.PermissionDeniedError("/".join(path))
            real = self._real(path)
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if statmod.S_ISDIR(st.st_mode):
                    raise ftp.IsADirectoryError("/".join(path))
                if not statmod.S_ISREG(st.st_mode):
                    raise ftp.PermissionDeniedError("/".join(path))
                if offset:
                    os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            return DownloadFile(fd, st.st_size, offset)
        return self._call(path, open_)

    def openForWriting(self, path, offset: int = 0, append: bool = False,
                       unique: bool = False):
        """
        An L{UploadFile} for C{path}.  A plain STOR writes to a temporary name
        renamed into place by C{close()}; REST (C{offset}) and APPE write in place.
        C{unique} (STOU) creates a new name beside C{path} instead.
        """
        def open_():
            anonymous_drop = False
            if not self.writable:
                if not self._in_upload_dir(path) or offset or append:
                    raise ftp.PermissionDeniedError("/".join(path))
                anonymous_drop = True
            target = self._entry_path(path)
            if os.path.islink(target):
                target = self._real(path)
            folder = os.path.dirname(target)
            if unique:
                return self._unique(path, folder)
            if os.path.isdir(target):
                raise ftp.IsADirectoryError("/".join(path))
            if anonymous_drop:
                if os.path.lexists(target):
                    raise ftp.FileExistsError("/".join(path))
            if offset or append:
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                if append:
                    flags |= os.O_APPEND
                fd = os.open(target, flags, 0o644)
                try:
                    if offset:
                        if offset > os.fstat(fd).st_size:
                            raise RestartPastEnd("/".join(path))
                        os.ftruncate(fd, offset)
                        os.lseek(fd, offset, os.SEEK_SET)
                except BaseException:
                    os.close(fd)
                    raise
                return UploadFile(target, fd, None, self.fsync)
            if not os.path.isdir(folder):
                raise ftp.FileNotFoundError("/".join(path))
            tmp = os.path.join(folder, TMP_PREFIX + secrets.token_hex(8))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644)
            return UploadFile(target, fd, tmp, self.fsync, exclusive=anonymous_drop)
        return self._call(path, open_)

    def _unique(self, path: builtins.list[str], folder: str) -> "UploadFile":
        base = path[-1] if path and not path[-1].startswith(".") else "file"
        for i in range(100):
            name = base if i == 0 else f"{base}.{i}"
            target = os.path.join(folder, name)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            return UploadFile(target, fd, None, self.fsync, created=True)
        raise ftp.FileExistsError("/".join(path))

    # -- listings ----------------------------------------------------------------

    def _make_entry(self, name: str, real: str, st: os.stat_result,
                    path: builtins.list[str]) -> Entry:
        is_dir = statmod.S_ISDIR(st.st_mode)
        return Entry(name=name, size=st.st_size, directory=is_dir, mode=st.st_mode,
                     nlink=st.st_nlink, mtime=st.st_mtime,
                     unique=f"{st.st_dev:x}g{st.st_ino:x}", perm=self._perm(path, is_dir))

    def _perm(self, path: builtins.list[str], is_dir: bool) -> str:
        if self.writable:
            return "elcmpdf" if is_dir else "rwadf"
        if self._is_upload_dir(path):
            return "ec"
        return "el" if is_dir else "r"

    def entry(self, path):
        def one():
            if self._in_upload_dir(path):
                raise ftp.PermissionDeniedError("/".join(path))
            real = self._real(path)
            st = os.stat(real)
            name = path[-1] if path else "/"
            return self._make_entry(name, real, st, path)
        return self._call(path, one)

    def entries(self, path):
        def many():
            if self._is_upload_dir(path) or self._in_upload_dir(path):
                raise ftp.PermissionDeniedError("/".join(path))
            real = self._real(path)
            st = os.stat(real)
            if not statmod.S_ISDIR(st.st_mode):
                return [self._make_entry(path[-1], real, st, path)]
            result = []
            with os.scandir(real) as it:
                for de in it:
                    if de.name.startswith(TMP_PREFIX):
                        continue
                    try:
                        if de.is_symlink():
                            target = os.path.realpath(de.path)
                            if not self._inside(target):
                                continue
                            st = os.stat(target)
                        else:
                            st = de.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not (statmod.S_ISDIR(st.st_mode) or statmod.S_ISREG(st.st_mode)):
                        continue
                    result.append(self._make_entry(de.name, de.path, st, path + [de.name]))
            result.sort(key=lambda e: e.name)
            return result
        return self._call(path, many)


class TransferStopped(Exception):
    """The consumer stopped a download before its end (connection lost, ABOR)."""


class FileShrank(Exception):
    """The file being sent was cut short (truncated) during the transfer."""


class RestartPastEnd(ftp.FTPCmdError):
    def response(self):
        return f"554 {self.errorMessage}: Restart offset is beyond the end of the file."


def _key(e: Entry, key: str) -> Any:
    """Twisted's C{list}/C{stat} keys, from an L{Entry}."""
    return {
        "size": e.size,
        "directory": e.directory,
        "permissions": e.mode,
        "hardlinks": e.nlink,
        "modified": e.mtime,
        "owner": "ftp",
        "group": "ftp",
    }[key]


# -- files -------------------------------------------------------------------------


@implementer(ftp.IReadFile, IPullProducer)
class DownloadFile:
    """
    An open file sent by a pull producer (the transport asks when it has room).

    When the consumer offers a plain socket (C{sendfile_socket()}, binary mode
    without TLS), the bytes go from the page cache to the socket with
    C{os.sendfile} and never through Python; otherwise in large chunks.
    """

    def __init__(self, fd: int, size: int, offset: int = 0):
        self.fd = fd
        self.size = size
        self.offset = offset
        self.sent = 0
        #: The data connection: a consumer that may also offer C{sendfile_socket()}
        #: and C{kick()} (netsuite's own, L{netsuite.ftp.data}).
        self._consumer: Any = None
        self._done: defer.Deferred | None = None
        self._socket: Any = None

    def send(self, consumer: IConsumer) -> defer.Deferred:
        assert self._done is None, "IReadFile.send may be called once"
        if self.size - self.offset <= CHUNK:
            return self._send_whole(consumer)
        return self._produce(consumer)

    def _produce(self, consumer: IConsumer) -> defer.Deferred:
        self._consumer = consumer
        # Kept here: registering a pull producer runs it at once, and a file
        # that ends (or fails) in that first turn fires and clears _done.
        done = self._done = defer.Deferred()
        offer = getattr(consumer, "sendfile_socket", None)
        self._socket = offer() if offer is not None else None
        consumer.registerProducer(self, False)
        return done

    def _send_whole(self, consumer: IConsumer) -> defer.Deferred:
        """
        A file of at most one chunk: one read, one write, no producer (which
        would cost reactor turns and timer resets for a file sent at once).
        """
        try:
            data = os.pread(self.fd, CHUNK, self.offset)
            if len(data) == CHUNK:  # it grew meanwhile (or is exactly a chunk): stream the rest
                os.lseek(self.fd, self.offset + CHUNK, os.SEEK_SET)
        except OSError:
            self.close()
            return defer.fail()
        self.sent = len(data)
        if data:
            consumer.write(data)
        if len(data) == CHUNK:
            return self._produce(consumer)
        self.close()
        short = self._short()
        return defer.succeed(self.sent) if short is None else defer.fail(short)

    def resumeProducing(self) -> None:
        if self._consumer is None:
            return
        if self._socket is not None:
            self._sendfile()
            return
        try:
            data = os.read(self.fd, CHUNK)
        except OSError:
            self._finish(Failure())
            return
        if not data:
            self._finish(self._short())
            return
        self.sent += len(data)
        self._consumer.write(data)

    def _short(self) -> Failure | None:
        """At end of file: a failure if the file ended before the size announced in 150."""
        if self.offset + self.sent < self.size:
            return Failure(FileShrank(f"the file ended at {self.offset + self.sent} of "
                                      f"{self.size} bytes"))
        return None

    def _sendfile(self) -> None:
        # Again while the socket takes more (the client drains it meanwhile, on
        # another core), up to SENDFILE_MAX a turn: one call a turn left the
        # transfer waiting on the reactor's round trip after each socket buffer.
        budget = SENDFILE_MAX
        out = self._socket.fileno()
        while budget > 0:
            try:
                n = os.sendfile(out, self.fd, self.offset + self.sent, budget)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._finish(Failure())
                return
            if n == 0:
                self._finish(self._short())
                return
            self.sent += n
            budget -= n
        self._consumer.kick()

    def stopProducing(self) -> None:
        if self._consumer is not None:
            self._finish(Failure(TransferStopped("the data connection went away")),
                         unregister=False)

    def _finish(self, failure: Failure | None, unregister: bool = True) -> None:
        consumer, self._consumer = self._consumer, None
        self.close()
        if unregister and consumer is not None:
            consumer.unregisterProducer()
        d, self._done = self._done, None
        if d is not None:
            if failure is None:
                d.callback(self.sent)
            else:
                d.errback(failure)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@implementer(ftp.IWriteFile, IConsumer)
class UploadFile:
    """
    The consumer an upload writes into.  C{close()} makes it final (fsync,
    then rename of the temporary name); C{abort()} throws a temporary name away.
    """

    def __init__(self, final: str, fd: int, tmp: str | None, fsync: bool,
                 exclusive: bool = False, created: bool = False):
        self.final = final
        self.fd = fd
        self.tmp = tmp
        self.do_fsync = fsync
        self.exclusive = exclusive
        #: STOU made this name itself: remove it again if the upload fails.
        self.created = created
        self.received = 0
        self._producer = None

    @property
    def name(self) -> str:
        return os.path.basename(self.final)

    def receive(self) -> defer.Deferred:
        return defer.succeed(self)

    def registerProducer(self, producer, streaming) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.received += len(data)

    def _commit(self) -> None:
        try:
            if self.do_fsync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            if self.exclusive:
                # Anonymous drop box: never replace a name that appeared meanwhile.
                os.link(self.tmp, self.final)
                os.unlink(self.tmp)
            else:
                os.replace(self.tmp, self.final)
            if self.do_fsync:
                fsync_dir(os.path.dirname(self.final))

    def close(self) -> defer.Deferred:
        """Make the upload final; runs in a thread because fsync blocks."""
        d = threads.deferToThread(self._commit)

        def failed(f: Failure) -> Failure:
            self.abort()
            if f.check(OSError):
                err = f.value
                if disk_full(err):
                    return Failure(StorageFull(self.name))
                if err.errno == errno.EEXIST:
                    return Failure(ftp.FileExistsError(self.name))
                if err.errno == errno.ENAMETOOLONG:
                    return Failure(NameTooLong(self.name))
            return f

        return d.addErrback(failed)

    def abort(self) -> None:
        """The upload failed: close, and remove what is not meant to stay."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for leftover in (self.tmp, self.final if self.created else None):
            if leftover:
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


# -- the realm's entry point ---------------------------------------------------------


def _segments(folder: str) -> list[str]:
    return [s for s in folder.strip("/").split("/") if s and s != "."]


def anonymous_root(config) -> Path | None:
    """The anonymous root from C{[ftp]}, relative paths under the data directory."""
    root = config.ftp.anonymous_root
    if root is None:
        return None
    root = Path(root)
    return root if root.is_absolute() else Path(config.data_dir) / root


def prepare_anonymous_root(config) -> tuple[Path, list[str] | None]:
    """Create the anonymous root (and upload folder); return them."""
    root = anonymous_root(config)
    if root is None:
        raise ValueError("anonymous FTP is not configured")
    try:
        root.mkdir(parents=True, exist_ok=True)
        upload = None
        if config.ftp.anonymous_upload_dir:
            upload = _segments(config.ftp.anonymous_upload_dir)
            root.joinpath(*upload).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {root}: {e.strerror}", "ftp.anonymous_root") from e
    return root, upload


def shell_for(realm, user) -> JailedShell | None:
    """
    The avatar for C{user}: its own root (created if missing), or for
    L{netsuite.realm.ANONYMOUS} the read-only public root, if configured.
    """
    config = realm.config
    ftp_config = config.ftp
    if user is ANONYMOUS:
        if ftp_config.anonymous_root is None:
            return None
        root, upload = prepare_anonymous_root(config)
        return JailedShell(root, writable=False, upload_dir=upload, fsync=ftp_config.fsync_uploads)
    root = Path(realm.ftp_root(user))
    root.mkdir(parents=True, exist_ok=True, mode=0o750)
    return JailedShell(root, writable=True, fsync=ftp_config.fsync_uploads)
