"""
A DNS server on loopback for tests: twisted.names answering authoritatively
from a JSON file of TXT records (C{{"name": ["text", ...]}}) and, optionally, a
second one of A records (C{{"name": "127.0.0.1"}}) and a third of MX records
(C{{"domain": [[10, "mx.host"], ...]}}); a C{"SILENT name"} key makes it
never answer for that name (a DNS timeout).  Run as a subprocess, it prints its
UDP port (TCP on the same port where free).  Every question it is asked goes
into C{queries.log} beside the zone file (C{DNSServer.queries()}), so a test
can count lookups.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer
from twisted.names import common, dns, error, server

#: Record types a key may name before the name ("PTR 1.0.0.127.in-addr.arpa"); plain: TXT.
_TYPED = {"A": (dns.A, dns.Record_A), "PTR": (dns.PTR, dns.Record_PTR)}


class Zone(common.ResolverBase):
    """TXT, MX, and A or PTR records (under a typed key, or in C{a}); the rest is NXDOMAIN."""

    def __init__(self, txt: dict[str, list[str]], a: dict[str, str] | None = None,
                 mx: dict[str, list] | None = None, queries=None):
        super().__init__()
        self.queries = queries  # a text file, or None
        self.typed: dict[tuple[int, str], list[str]] = {}
        self.txt = {}
        #: Names under a "SILENT name" key: no answer at all, of any type.
        self.silent: set[str] = set()
        for k, v in txt.items():
            kind, _, rest = k.partition(" ")
            if kind == "SILENT" and rest:
                self.silent.add(rest.lower().rstrip("."))
            elif rest and kind in _TYPED:
                self.typed[(_TYPED[kind][0], rest.lower().rstrip("."))] = v
            else:
                self.txt[k.lower().rstrip(".")] = v
        #: Names with an A record only: any other type asked of them is an empty answer.
        self.a = {k.lower().rstrip("."): v for k, v in (a or {}).items()}
        self.mx = {k.lower().rstrip("."): v for k, v in (mx or {}).items()}

    def _lookup(self, name, cls, type_, timeout):
        key = name.decode().lower().rstrip(".")
        if self.queries is not None:
            self.queries.write(f"{dns.QUERY_TYPES.get(type_, type_)} {key}\n")
            self.queries.flush()
        if key in self.silent:
            return defer.Deferred()  # never answered: the asker times out
        typed = self.typed.get((type_, key))
        if typed is not None:
            record = next(r for t, r in _TYPED.values() if t == type_)
            return defer.succeed(([dns.RRHeader(name, type_, dns.IN, 60, record(v), auth=True)
                                   for v in typed], [], []))
        exchanges = self.mx.get(key)
        if exchanges is not None and key not in self.txt:
            if type_ not in (dns.MX, dns.ALL_RECORDS):
                return defer.succeed(([], [], []))
            return defer.succeed(([dns.RRHeader(name, dns.MX, dns.IN, 60,
                                                dns.Record_MX(pref, host.encode()), auth=True)
                                   for pref, host in exchanges], [], []))
        address = self.a.get(key)
        if address is not None:
            if type_ not in (dns.A, dns.ALL_RECORDS):
                return defer.succeed(([], [], []))
            return defer.succeed(([dns.RRHeader(name, dns.A, dns.IN, 60,
                                                dns.Record_A(address), auth=True)], [], []))
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


def main(path: str, a_path: str | None = None, mx_path: str | None = None) -> None:
    from twisted.internet import reactor

    with open(path) as f:
        txt = json.load(f)
    a = None
    if a_path:
        with open(a_path) as f:
            a = json.load(f)
    mx = None
    if mx_path:
        with open(mx_path) as f:
            mx = json.load(f)
    zone = Zone(txt, a, mx, open(Path(path).with_name("queries.log"), "a"))
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

    def __init__(self, directory, records: dict[str, list[str]],
                 addresses: dict[str, str] | None = None, mx: dict[str, list] | None = None):
        self.path = directory / "zone.json"
        self.path.write_text(json.dumps(records))
        argv = [sys.executable, __file__, str(self.path)]
        if addresses is not None:
            a_path = directory / "zone-a.json"
            a_path.write_text(json.dumps(addresses))
            argv.append(str(a_path))
        if mx is not None:
            mx_path = directory / "zone-mx.json"
            mx_path.write_text(json.dumps(mx))
            if addresses is None:
                argv.append("")
            argv.append(str(mx_path))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"dns server did not start: {line!r}")
        self.port = int(line)

    def queries(self) -> list[str]:
        """The questions asked so far, as C{"TYPE name"} (C{"TXT _mta-sts.remote.test"})."""
        try:
            return (self.path.parent / "queries.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
