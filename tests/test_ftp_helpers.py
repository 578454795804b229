"""Client helpers shared by the FTP tests (ftplib subclasses for every data mode)."""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket

from rawsmtp import insecure_context as tls_context


class ModeMixin:
    """Pick the data mode: PASV, EPSV, PORT or EPRT (ftplib alone uses EPSV/EPRT for IPv6 only)."""

    mode = "PASV"

    def use(self, mode: str):
        self.mode = mode
        self.set_pasv(mode in ("PASV", "EPSV"))
        return self

    def makepasv(self):
        if self.mode == "EPSV":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def sendport(self, host, port):
        if self.mode == "EPRT":
            return self.sendeprt(host, port)
        return super().sendport(host, port)


class FTP(ModeMixin, ftplib.FTP):
    pass


class FTPS(ModeMixin, ftplib.FTP_TLS):
    """
    FTP_TLS that resumes the control session on data connections, as curl,
    lftp and FileZilla do (Python 3.11's ftplib does not).
    """

    def __init__(self, *a, **kw):
        kw.setdefault("context", tls_context())
        super().__init__(*a, **kw)

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class ImplicitFTPS(FTPS):
    """Implicit FTPS (port 990 style): TLS from the first byte."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        sock = socket.create_connection((host, port), self.timeout)
        self.af = sock.family
        self.sock = self.context.wrap_socket(sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class StockFTPS(ftplib.FTP_TLS):
    """Python's FTP_TLS as shipped: no session resumption on data connections."""

    def __init__(self, *a, **kw):
        kw.setdefault("context", tls_context())
        super().__init__(*a, **kw)


def connect(cls, port: int, user: str | None = None, password: str = "", tls: bool = False,
            timeout: float = 20):
    f = cls(timeout=timeout)
    f.connect("127.0.0.1", port)
    if tls:
        f.auth()
    if user is not None:
        f.login(user, password)
        if tls:
            f.prot_p()
    return f


def fetch(f, name: str, rest: int | None = None) -> bytes:
    buf = io.BytesIO()
    f.retrbinary(f"RETR {name}", buf.write, rest=rest)
    return buf.getvalue()


def store(f, name: str, data: bytes, verb: str = "STOR", rest: int | None = None) -> str:
    return f.storbinary(f"{verb} {name}", io.BytesIO(data), rest=rest)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw(port: int, timeout: float = 10) -> "RawControl":
    return RawControl(port, timeout)


class RawControl:
    """A bare control connection for hostile input."""

    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply (multi-line aware), as text."""
        first = self.file.readline()
        if not first:
            return ""
        lines = [first]
        if first[3:4] == b"-":
            code = first[:3]
            while True:
                line = self.file.readline()
                if not line:
                    break
                lines.append(line)
                if line[:3] == code and line[3:4] == b" ":
                    break
        return b"".join(lines).decode("utf-8", "replace")

    def cmd(self, line: str | bytes) -> str:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
