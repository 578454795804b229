"""
BINARY (RFC 3516) against the real daemon (imaplib, and a raw socket for
literal8), plus the decoders on their own.
"""

from __future__ import annotations

import base64
import imaplib
import socket

import pytest

from netsuite.imap import wire
from netsuite.imap.binary import UnknownCTE, binary_section, decode_base64, decode_qp, to_7bit
from netsuite.imap.message import Part

USERS = {"alice": "wonderland"}

PDF = bytes(range(256)) * 4  # every octet, NUL included

MIXED = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: parts\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
         b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"caf=C3=A9 au lait  \r\nsoft=\r\nbreak\r\n"
         b"--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
         base64.encodebytes(PDF).replace(b"\n", b"\r\n") +
         b"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
         b"begin 644 x\r\nend\r\n"
         b"--B--\r\n")


# -- the decoders -----------------------------------------------------------------------------

def test_quoted_printable_follows_rfc_2045():
    assert decode_qp(b"caf=C3=A9 au lait  \r\nsoft=\r\nbreak\r\n") == \
        "café au lait\r\nsoftbreak\r\n".encode()
    # White space after a soft break's "=" is dropped with it; a bad escape is kept.
    assert decode_qp(b"foo\t \t= \r\n=62\r\nx=ZZ") == b"foo\t \tb\r\nx=ZZ"


def test_base64_skips_white_space_and_stray_characters():
    assert decode_base64(b"  aGVs    \r\n bG8g  \r\n   d29y  \t \r\n    bGQ= \r\n") == \
        b"hello world"
    assert decode_base64(b"aGVsbG8") == b"hello"  # missing padding


def test_binary_sections_of_each_kind():
    msg = Part(MIXED)
    # The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
    assert binary_section(msg, (1,)) == "café au lait\r\nsoftbreak".encode()
    assert binary_section(msg, (2,)) == PDF
    assert binary_section(msg, ()) == MIXED
    assert binary_section(msg, (9,)) is None
    with pytest.raises(UnknownCTE):
        binary_section(msg, (3,))


def test_literal8_messages_are_stored_as_base64_and_given_back_exactly():
    single = (b"Subject: s\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\n\r\n\n")
    stored = to_7bit(single)
    assert b"\x00" not in stored and b"Content-Transfer-Encoding: base64" in stored
    assert b"binary" not in stored.lower()
    assert binary_section(Part(stored), (1,)) == b"\x00-\xe4\n\r\n\n"
    multi = (b"Content-Type: multipart/mixed; boundary=\"Z\"\r\n\r\npre\r\n--Z\r\n"
             b"Content-Type: text/plain\r\n\r\nplain\r\n--Z\r\n"
             b"Content-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n"
             b"\x89PNG\x00\x01\r\n--Z--\r\npost\r\n")
    stored = to_7bit(multi)
    part = Part(stored)
    assert part.children[0].data == b"Content-Type: text/plain\r\n\r\nplain"
    assert binary_section(part, (2,)) == b"\x89PNG\x00\x01"
    assert stored.startswith(b"Content-Type: multipart/mixed") and stored.endswith(b"post\r\n")
    assert to_7bit(MIXED) == MIXED  # nothing binary: byte for byte


def test_binary_fetch_grammar():
    atts = wire.parse_fetch_atts(wire.Cursor(b"(BINARY[1.2]<0.10> BINARY.PEEK[] "
                                             b"BINARY.SIZE[3])", []))
    assert [(a.name, a.section.part, a.section.peek, a.section.partial) for a in atts] == [
        ("BINARY", (1, 2), False, (0, 10)), ("BINARY", (), True, None),
        ("BINARY.SIZE", (3,), True, None)]
    for bad in (b"BINARY[1.HEADER]", b"BINARY[TEXT]", b"BINARY.SIZE[1]<0.5>", b"BINARY[0]"):
        with pytest.raises(wire.ParseError):
            cur = wire.Cursor(bad, [])
            wire.parse_fetch_atts(cur)
            cur.end()
    assert wire.literal8(b"a\x00b") == b"~{3}\r\na\x00b"
    assert wire.literal8(b"ab") == b"{2}\r\nab"


# -- against the daemon -----------------------------------------------------------------------

@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"imap": {"allow_plaintext_auth": True}})


def login(d) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    return m


def test_fetch_binary_decodes_each_part(daemon):
    m = login(daemon)
    assert "BINARY" in m.capabilities
    assert m.append("INBOX", "", None, MIXED)[0] == "OK"
    m.select("INBOX")
    typ, data = m.fetch("1", "(BINARY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2]<250.10>)")
    assert typ == "OK", data
    head = data[0][0]
    assert data[0][1] == "café au lait\r\nsoftbreak".encode()
    assert b"BINARY[1] {" in head
    assert b"BINARY.SIZE[2] %d" % len(PDF) in data[1][0]
    assert b"BINARY[2]<250> ~{10}" in data[1][0] and data[1][1] == PDF[250:260]
    assert m.fetch("1", "(FLAGS)")[1][0].count(b"\\Seen") == 0  # PEEK and SIZE: unread
    typ, data = m.fetch("1", "(BINARY[1])")
    assert typ == "OK" and b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0]
                                                  for x in data)
    m.logout()


def test_unknown_transfer_encoding_is_refused(daemon):
    m = login(daemon)
    m.append("INBOX", "", None, MIXED)
    m.select("INBOX")
    typ, data = m.fetch("1", "(BINARY.PEEK[3])")
    assert typ == "NO" and data[0].startswith(b"[UNKNOWN-CTE]"), data
    assert m.noop()[0] == "OK"
    m.logout()


def test_append_literal8_keeps_every_octet(daemon):
    body = b"\x00-\xe4\n\r\n\n" + bytes(range(256))
    msg = (b"Subject: raw\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + body)
    s = socket.create_connection(("127.0.0.1", daemon.port("imap")), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN alice wonderland\r\n")
    while not f.readline().startswith(b"a "):
        pass
    s.sendall(b"b APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
    line = f.readline()
    assert line.startswith(b"b OK [APPENDUID"), line
    s.close()
    m = login(daemon)
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[1] BINARY.PEEK[1] BINARY.SIZE[1])")
    assert typ == "OK"
    assert base64.b64decode(data[0][1]) == body  # BODY[]: mail any client can read
    assert b"BINARY[1] ~{%d}" % len(body) in data[1][0] and data[1][1] == body
    assert b"BINARY.SIZE[1] %d" % len(body) in data[2]
    m.logout()
