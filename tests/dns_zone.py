"""
A DNS server on loopback for tests: twisted.names answering authoritatively
from a JSON file of TXT records (C{{"name": ["text", ...]}}); run as a
subprocess, it prints its UDP port (TCP on the same port where free).
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.internet import defer
from twisted.names import common, dns, error, server

#: Record types a key may name before the name ("PTR 1.0.0.127.in-addr.arpa"); plain: TXT.
_TYPED = {"A": (dns.A, dns.Record_A), "PTR": (dns.PTR, dns.Record_PTR)}


class Zone(common.ResolverBase):
    """TXT records, and A or PTR ones under a typed key; everything else is NXDOMAIN."""

    def __init__(self, txt: dict[str, list[str]]):
        super().__init__()
        self.typed: dict[tuple[int, str], list[str]] = {}
        self.txt = {}
        for k, v in txt.items():
            kind, _, rest = k.partition(" ")
            if rest and kind in _TYPED:
                self.typed[(_TYPED[kind][0], rest.lower().rstrip("."))] = v
            else:
                self.txt[k.lower().rstrip(".")] = v

    def _lookup(self, name, cls, type_, timeout):
        key = name.decode().lower().rstrip(".")
        typed = self.typed.get((type_, key))
        if typed is not None:
            record = next(r for t, r in _TYPED.values() if t == type_)
            return defer.succeed(([dns.RRHeader(name, type_, dns.IN, 60, record(v), auth=True)
                                   for v in typed], [], []))
        texts = self.txt.get(key)
        if texts is None:
            return defer.fail(error.AuthoritativeDomainError(name))
        if type_ not in (dns.TXT, dns.ALL_RECORDS):
            return defer.succeed(([], [], []))
        answers = []
        for text in texts:
            raw = text.encode()
            chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
            answers.append(dns.RRHeader(name, dns.TXT, dns.IN, 60, dns.Record_TXT(*chunks),
                                        auth=True))
        return defer.succeed((answers, [], []))


def main(path: str) -> None:
    from twisted.internet import reactor

    with open(path) as f:
        zone = Zone(json.load(f))
    factory = server.DNSServerFactory(authorities=[zone])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    number = port.getHost().port
    try:
        reactor.listenTCP(number, factory, interface="127.0.0.1")
    except Exception:
        pass
    print(number, flush=True)
    reactor.run()


class DNSServer:
    """The server above as a subprocess of the test, stopped by PID."""

    def __init__(self, directory, records: dict[str, list[str]]):
        self.path = directory / "zone.json"
        self.path.write_text(json.dumps(records))
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.path)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"dns server did not start: {line!r}")
        self.port = int(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()


if __name__ == "__main__":
    main(sys.argv[1])
