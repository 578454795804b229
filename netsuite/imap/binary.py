"""
BINARY (RFC 3516): a MIME part's content with its Content-Transfer-Encoding
undone, for C{FETCH BINARY[...]} and C{BINARY.SIZE[...]}.  Pure: bytes in,
bytes out.
"""

from __future__ import annotations

import binascii
import re

from netsuite.imap.message import Part

_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINES = re.compile(rb"\r\n|\n")


class UnknownCTE(ValueError):
    """The part's Content-Transfer-Encoding is not one BINARY can undo: NO [UNKNOWN-CTE]."""


def binary_section(message: Part, path: tuple[int, ...]) -> bytes | None:
    """
    C{BINARY[path]}: the part's body decoded (base64, quoted-printable), as is
    for 7bit/8bit/binary and for multipart and message/rfc822 parts (which
    cannot be encoded otherwise); the whole message as is for C{BINARY[]}.
    None when there is no such part.
    """
    if not path:
        return decode_tree(message.data)
    raw = message.section(path, "", ())
    part = message.subpart(path)
    if raw is None or part is None:
        return None
    if part.children or part.maintype in (b"multipart", b"message"):
        return decode_tree(raw)
    cte = (part.get(b"content-transfer-encoding") or b"7bit").strip().lower()
    if cte in (b"7bit", b"8bit", b"binary"):
        return raw
    if cte == b"base64":
        return decode_base64(raw)
    if cte == b"quoted-printable":
        return decode_qp(raw)
    raise UnknownCTE(cte.decode("ascii", "replace"))


def decode_base64(data: bytes) -> bytes:
    """Lenient as mail readers are: white space and stray characters skipped."""
    clean = re.sub(rb"[^A-Za-z0-9+/=]", b"", data).split(b"=", 1)[0]
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return binascii.a2b_base64(clean[:len(clean) // 4 * 4 - 4] or b"")


def decode_qp(data: bytes) -> bytes:
    """
    RFC 2045 6.7: trailing white space on a line is dropped, a line ending in
    C{=} continues on the next (soft break), C{=XX} is an octet; anything else
    is kept as it came.  Hard line breaks come out as CRLF.
    """
    lines = _LINES.split(data)
    ends_with_break = data.endswith(b"\n")
    if ends_with_break:
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t")
        last = i == len(lines) - 1
        if line.endswith(b"="):
            out.append(_HEX.sub(_octet, line[:-1]))
        else:
            out.append(_HEX.sub(_octet, line))
            if not last or ends_with_break:
                out.append(b"\r\n")
    return b"".join(out)


def _octet(m: re.Match) -> bytes:
    return bytes([int(m.group(1), 16)])


_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[^\n]*\n(?:[ \t][^\n]*\n)*")


def to_7bit(data: bytes) -> bytes:
    """
    An APPENDed literal8 message (RFC 3516 4.4) as it is stored: every
    single part whose content is binary (C{Content-Transfer-Encoding:
    binary}, or holding a NUL) re-encoded as base64, so BODY[] stays mail
    any client can read and BINARY[] gives back the exact octets.  Anything
    else is kept byte for byte.
    """
    part = Part(data)
    if part.children:
        return _with_children(part, data, to_7bit)
    if part.maintype in (b"multipart", b"message"):
        return data
    cte = (part.get(b"content-transfer-encoding") or b"").strip().lower()
    if cte != b"binary" and b"\x00" not in part.body:
        return data
    header = _CTE_FIELD.sub(b"", part.header)
    header = header[:-2] + b"Content-Transfer-Encoding: base64\r\n\r\n"
    encoded = binascii.b2a_base64(part.body, newline=False)
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    return header + b"\r\n".join(lines) + b"\r\n"


def decode_tree(data: bytes, keep_cte: bool = False) -> bytes:
    """
    A message or multipart with every base64 or quoted-printable leaf decoded
    and its Content-Transfer-Encoding rewritten to C{binary} (as Dovecot's
    BINARY[] of a whole message or an embedded one); C{keep_cte} leaves the
    headers as they were, for the BODYPARTSTRUCTURE of that content
    (RFC 5524: it describes what BINARY returns).
    """
    part = Part(data)
    if part.children:
        return _with_children(part, data, lambda child: decode_tree(child, keep_cte))
    if part.message is not None:
        return part.header + decode_tree(part.body, keep_cte)
    cte = (part.get(b"content-transfer-encoding") or b"7bit").strip().lower()
    if cte == b"base64":
        body = decode_base64(part.body)
    elif cte == b"quoted-printable":
        body = decode_qp(part.body)
    elif cte in (b"7bit", b"8bit", b"binary"):
        return data
    else:
        raise UnknownCTE(cte.decode("ascii", "replace"))
    header = part.header if keep_cte else _CTE_FIELD.sub(
        b"Content-Transfer-Encoding: binary\r\n", part.header, count=1)
    return header + body


def _with_children(part: Part, data: bytes, rewrite) -> bytes:
    """
    A multipart with each child's bytes replaced by C{rewrite(child bytes)}, its
    preamble, boundaries and epilogue kept byte for byte (C{data} as it was if a
    child cannot be found in the body again).
    """
    body, out, pos = part.body, [], 0
    for child in part.children:
        at = body.find(child.data, pos)
        if at < 0:
            return data
        out.append(body[pos:at])
        out.append(rewrite(child.data))
        pos = at + len(child.data)
    out.append(body[pos:])
    return part.header + b"".join(out)
