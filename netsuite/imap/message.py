"""
A message as IMAP sees it: a MIME part tree over the exact wire bytes, so
every BODY[section] is a byte-exact slice, and ENVELOPE / BODYSTRUCTURE
rendered from it (RFC 3501 7.4.2).  Pure: bytes in, bytes out.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterator
from email.header import decode_header, make_header

from netsuite.imap.wire import string

_FOLD = re.compile(rb"\r\n[ \t]")


class Part:
    """One MIME entity: header block, body, and its children."""

    def __init__(self, data: bytes, default_type: bytes = b"text/plain"):
        self.data = data
        if data.startswith(b"\r\n"):
            self.header, self.body = b"\r\n", data[2:]
        else:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                # Only a header (or garbage): treat all as header, empty body.
                self.header, self.body = data if data.endswith(b"\r\n") else data, b""
            else:
                self.header, self.body = data[:i + 4], data[i + 4:]
        self.fields = parse_header(self.header)
        ctype = self.get(b"content-type")
        self.maintype, self.subtype, self.params = parse_content_type(ctype, default_type)
        self.children: list[Part] = []
        self.message: Part | None = None
        if self.maintype == b"multipart":
            boundary = self.params.get(b"boundary")
            if boundary:
                child_default = (b"message/rfc822" if self.subtype == b"digest"
                                 else b"text/plain")
                self.children = [Part(p, child_default)
                                 for p in split_multipart(self.body, boundary)]
        elif self.maintype == b"message" and self.subtype == b"rfc822":
            self.message = Part(self.body)

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.fields if k == name]

    # -- sections ----------------------------------------------------------------------

    def subpart(self, path: tuple[int, ...]) -> "Part | None":
        """
        Part numbers as in BODY[1.2]: None when there is no such part.

        A message (the top level, or one a message/rfc822 part encapsulates)
        numbers its multipart children, or else has one part, its body; a
        message/rfc822 part numbers as the message it holds, so 1.1.1 walks
        two embeddings down (RFC 3501 6.4.5).
        """
        part = self
        for depth, n in enumerate(path):
            if depth == 0:
                numbered = _numbered(part)
            elif part.children:
                numbered = part.children
            elif part.message is not None:
                numbered = _numbered(part.message)
            elif isinstance(part, _BodyOnly):
                return None  # a body alone has no parts
            else:
                numbered = [_BodyOnly(part)]  # a leaf of a multipart: 1 is its body (Dovecot)
            if not 1 <= n <= len(numbered):
                return None
            part = numbered[n - 1]
        return part

    def section(self, path: tuple[int, ...], kind: str, fields: tuple[bytes, ...]) -> bytes | None:
        """The bytes of BODY[path.kind (fields)], or None if the part does not exist."""
        part = self.subpart(path) if path else self
        if part is None:
            return None
        if kind == "MIME":
            return part.header
        if path and kind in ("HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            # HEADER/TEXT of a part refer to its encapsulated message.
            if part.message is None:
                return b""
            part = part.message
        if kind == "":
            return part.body if path else part.data
        if kind == "TEXT":
            return part.body
        if kind == "HEADER":
            return part.header
        return pick_headers(part.header, fields, kind == "HEADER.FIELDS.NOT")


def _numbered(message: Part) -> list[Part]:
    """The parts a message numbers: its multipart children, or its body as part 1."""
    return message.children or [_BodyOnly(message)]


class _BodyOnly(Part):
    """
    Part 1 of a single-part message: the body, with the message's MIME header;
    a message/rfc822 body keeps the message it encapsulates.
    """

    def __init__(self, outer: Part):
        self.__dict__.update(outer.__dict__)
        self.data = outer.body


def parse_header(header: bytes) -> list[tuple[bytes, bytes]]:
    """Unfolded (lower-case name, value) pairs, in order."""
    out = []
    for line in _FOLD.sub(b" ", header).split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name and b" " not in name.strip():
            out.append((name.strip().lower(), value.strip()))
    return out


def pick_headers(header: bytes, names: tuple[bytes, ...], negate: bool) -> bytes:
    """The header lines (with continuations) named in C{names}, then CRLF."""
    wanted = {n.lower() for n in names}
    out = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        keep = (name in wanted) != negate
        if keep:
            out.append(line)
    # The blank line after the fields, if the header had one (Dovecot does the same).
    blank = b"\r\n" if header.endswith(b"\r\n\r\n") or header == b"\r\n" else b""
    return b"".join(line + b"\r\n" for line in out) + blank


def split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """Bodies of the parts between C{--boundary} lines (preamble and epilogue dropped)."""
    delim = b"--" + boundary
    parts = []
    pos = 0
    start = None
    while True:
        i = body.find(delim, pos)
        if i < 0:
            break
        if i != 0 and body[i - 2:i] != b"\r\n":
            pos = i + len(delim)
            continue
        line_end = body.find(b"\r\n", i)
        tail = body[i + len(delim):line_end if line_end >= 0 else len(body)]
        closing = tail.startswith(b"--")
        if tail.strip(b" \t-") and not closing:
            pos = i + len(delim)
            continue
        if start is not None:
            parts.append(body[start:max(start, i - 2)])
        if closing or line_end < 0:
            start = None
            break
        start = line_end + 2
        pos = start
    if start is not None:
        parts.append(body[start:])
    return parts


_PARAM = re.compile(rb';\s*([^=\s;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def parse_content_type(value: bytes | None, default: bytes = b"text/plain"):
    if not value:
        main, _, sub = default.partition(b"/")
        params = {b"charset": b"us-ascii"} if main == b"text" else {}
        return main, sub, params
    head, _, _ = value.partition(b";")
    main, slash, sub = head.strip().lower().partition(b"/")
    if not slash or not main or not sub:
        main, sub = b"text", b"plain"
    return main, sub, parse_params(value)


def parse_params(value: bytes) -> dict[bytes, bytes]:
    params = {}
    for m in _PARAM.finditer(value):
        v = m.group(2)
        if v.startswith(b'"'):
            v = re.sub(rb"\\(.)", rb"\1", v[1:-1])
        params[m.group(1).lower()] = v
    return params


# -- ENVELOPE -----------------------------------------------------------------------------------

def _nstring(value: bytes | None) -> bytes:
    return string(value) if value is not None else b"NIL"


def _top_level(text: str) -> Iterator[tuple[int, str]]:
    """
    (index, character) of what lies outside quoted strings, comments and
    <angle-addrs>: where an address list's separators (, : ;) count (RFC 5322 3.4).
    """
    depth_angle = depth_comment = 0
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            depth_comment += 1
        elif c == ")" and depth_comment:
            depth_comment -= 1
        elif depth_comment:
            continue
        elif c == "<":
            depth_angle += 1
        elif c == ">" and depth_angle:
            depth_angle -= 1
        elif not depth_angle:
            yield i, c


def _split_groups(text: str) -> list[tuple[str | None, str]]:
    """Address-list text -> (group name or None, members text) runs (RFC 5322 3.4)."""
    runs: list[tuple[str | None, str]] = []
    start = 0
    group: str | None = None
    for i, c in _top_level(text):
        if c == ":" and group is None:
            head = text[start:i]
            cut = head.rfind(",")
            if cut >= 0:
                runs.append((None, head[:cut]))
            group = head[cut + 1:].strip()
            start = i + 1
        elif c == ";" and group is not None:
            runs.append((group, text[start:i]))
            group = None
            start = i + 1
    if group is not None:
        runs.append((group, text[start:]))
    elif text[start:].strip(" ,"):
        runs.append((None, text[start:]))
    return runs


def _split_addresses(text: str) -> list[str]:
    """A mailbox list cut at its top-level commas."""
    out = []
    start = 0
    for i, c in _top_level(text):
        if c == ",":
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


#: An obsolete source route at the start of an angle-addr: <@a,@b:user@domain> (RFC 5322 4.4).
_ROUTE = re.compile(r"<\s*(@[^<>\":]*?)\s*:")
_ANGLE = re.compile(r"<[^<>]*>")
_COMMENT = re.compile(r"\s*\((?:[^()\\]|\\.)*\)\s*")
_LEADING_COMMENTS = re.compile(r"^(?:\s*\((?:[^()\\]|\\.)*\))+\s*")


def _address(name: str, addr: str, route: str | None = None) -> bytes:
    local, at, domain = addr.rpartition("@") if "@" in addr else (addr, "", "")

    def enc(s):
        return s.encode("utf-8", "surrogateescape") if s else None

    return b"(" + b" ".join([_nstring(enc(name)), _nstring(enc(route)), _nstring(enc(local)),
                             _nstring(enc(domain) if at else None)]) + b")"


def _parse_mailboxes(members: str) -> list[tuple[str, str | None, str]]:
    """(display name, source route or None, address) of each mailbox of a list."""
    out = []
    for item in _split_addresses(members):
        route = _ROUTE.search(item)
        if route:
            item = item[:route.start(1)] + item[route.end():]
        # A comment inside <...>, or before a bare addr-spec, is no display name
        # (Python's parser takes it for one; Dovecot only one after the addr-spec).
        item = _ANGLE.sub(lambda m: _COMMENT.sub("", m.group(0)), item)
        if "<" not in item:
            item = _LEADING_COMMENTS.sub("", item)
        for name, addr in email.utils.getaddresses([item]):
            if addr or name:
                out.append((name, route.group(1) if route else None, addr))
    return out


def _mailboxes(members: str) -> list[bytes]:
    """Each mailbox of a list as an ENVELOPE address, its source route kept (Dovecot does)."""
    return [_address(name, addr, route) for name, route, addr in _parse_mailboxes(members)]


def address_text(value: bytes) -> str:
    """
    An address header as SEARCH FROM/TO/CC/BCC matches it, the way Dovecot
    does: each mailbox written out again as C{name <local@domain>} (comments
    and odd spacing gone, RFC 2047 names decoded), groups as C{name: ...;}.
    """
    text = value.decode("utf-8", "surrogateescape")
    out = []
    for group, members in _split_groups(text):
        mailboxes = ", ".join(f"{decoded(name.encode('utf-8', 'surrogateescape'))} <{addr}>"
                              if name else addr
                              for name, _, addr in _parse_mailboxes(members))
        if group is not None:
            out.append(f"{group}: {mailboxes};")
        elif mailboxes:
            out.append(mailboxes)
    return ", ".join(out)


def addresses(value: bytes | None) -> bytes:
    if not value:
        return b"NIL"
    text = value.decode("utf-8", "surrogateescape")
    out = []
    for group, members in _split_groups(text):
        if group is not None:
            # Group syntax: (NIL NIL "name" NIL) members (NIL NIL NIL NIL).
            out.append(b"(NIL NIL " + string(group.encode("utf-8", "surrogateescape")) +
                       b" NIL)")
        out.extend(_mailboxes(members))
        if group is not None:
            out.append(b"(NIL NIL NIL NIL)")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(part: Part) -> bytes:
    g = part.get
    frm = g(b"from")
    items = [
        _nstring(g(b"date")), _nstring(g(b"subject")),
        addresses(frm), addresses(g(b"sender") or frm), addresses(g(b"reply-to") or frm),
        addresses(g(b"to")), addresses(g(b"cc")), addresses(g(b"bcc")),
        _nstring(g(b"in-reply-to")), _nstring(g(b"message-id")),
    ]
    return b"(" + b" ".join(items) + b")"


# -- BODYSTRUCTURE ---------------------------------------------------------------------------

def _plist(params: dict[bytes, bytes]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(string(k) + b" " + string(v)
                            for k, v in params.items()) + b")"


def _disposition(part: Part) -> bytes:
    value = part.get(b"content-disposition")
    if not value:
        return b"NIL"
    kind = value.partition(b";")[0].strip()
    return b"(" + string(kind) + b" " + _plist(parse_params(value)) + b")"


def _language(part: Part) -> bytes:
    value = part.get(b"content-language")
    if not value:
        return b"NIL"
    langs = [v.strip() for v in value.split(b",") if v.strip()]
    if len(langs) == 1:
        return string(langs[0])
    return b"(" + b" ".join(string(v) for v in langs) + b")"


def line_count(body: bytes) -> int:
    """Text lines as Dovecot and Cyrus count them: line ends."""
    return body.count(b"\n")


def bodystructure(part: Part, extended: bool = True) -> bytes:
    if part.children:
        inner = b"".join(bodystructure(c, extended) for c in part.children)
        out = inner + b" " + string(part.subtype)
        if extended:
            params = {k: v for k, v in part.params.items()}
            out += b" " + b" ".join([_plist(params), _disposition(part), _language(part),
                                     _nstring(part.get(b"content-location"))])
        return b"(" + out + b")"
    encoding = part.get(b"content-transfer-encoding") or b"7bit"
    params = part.params
    if part.maintype == b"text" and b"charset" not in params:
        params = {b"charset": b"us-ascii", **params}
    fields = [string(part.maintype), string(part.subtype), _plist(params),
              _nstring(part.get(b"content-id")), _nstring(part.get(b"content-description")),
              string(encoding), b"%d" % len(part.body)]
    if part.maintype == b"text":
        fields.append(b"%d" % line_count(part.body))
    elif part.message is not None:
        fields += [envelope(part.message), bodystructure(part.message, extended),
                   b"%d" % line_count(part.body)]
    if extended:
        fields += [_nstring(part.get(b"content-md5")), _disposition(part), _language(part),
                   _nstring(part.get(b"content-location"))]
    return b"(" + b" ".join(fields) + b")"


# -- SEARCH helpers ---------------------------------------------------------------------------

def decoded(value: bytes | None) -> str:
    """A header value with RFC 2047 words decoded, for SEARCH matching."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def sent_date(part: Part):
    """The Date: header as a date (for SENTBEFORE/SENTON/SENTSINCE)."""
    value = part.get(b"date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.decode("ascii", "replace")).date()
    except (TypeError, ValueError, IndexError):
        return None
