"""
URLAUTH (RFC 4467) and URLAUTH=BINARY (RFC 5524): GENURLAUTH signs a message
URL with the mailbox's access key, URLFETCH resolves signed URLs (also
another user's, when the URL's access allows it), RESETKEY revokes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from twisted.logger import Logger
from twisted.mail import imap4

from netsuite.imap import wire
from netsuite.imap.binary import UnknownCTE, binary_section, decode_tree
from netsuite.imap.commands import SessionBase
from netsuite.imap.message import Part, bodystructure
from netsuite.imap.url import BadURL, ImapURL, parse
from netsuite.imap.urlkeys import MailboxKeys, sign, verify
from netsuite.imap.wire import ParseError

log = Logger(namespace="netsuite.imap")

#: The one mechanism (RFC 4467 7): the server's own HMAC over the rump URL.
MECHANISM = "INTERNAL"


def _mailbox(name: str) -> str:
    """A URL's (UTF-8) mailbox name as a folder name (modified UTF-7, RFC 5092 3.2)."""
    try:
        name.encode("ascii")
        return "INBOX" if name.upper() == "INBOX" else name
    except UnicodeEncodeError:
        return name.encode("imap4-utf-7").decode("ascii")


class UrlAuthCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _keys(self, user: str) -> MailboxKeys:
        return MailboxKeys(self.account.store.mailbox_path(user))

    def imap_GENURLAUTH(self, tag, cur):
        pairs = []
        while True:
            text = cur.astring().decode("utf-8", "replace")
            cur.sp()
            mech = cur.atom().upper().decode("ascii", "replace")
            pairs.append((text, mech))
            if not cur.maybe(b" "):
                break
        cur.end()
        out = []
        for text, mech in pairs:
            if mech != MECHANISM:
                self._tagged(tag, b"NO", b"Unsupported URLAUTH mechanism")
                return
            try:
                url = parse(text)
            except BadURL as e:
                self._tagged(tag, b"BAD", b"Bad URL: " + str(e).encode())
                return
            if url.access is None or url.token is not None:
                self._tagged(tag, b"BAD", b"URL must end in ;URLAUTH=<access>")
                return
            if url.user != self.account.user:
                self._tagged(tag, b"NO", b"URL is not for this user")
                return
            name = _mailbox(url.mailbox)
            self.account.folder(name)  # NoSuchFolder: NO
            key = self._keys(url.user).key(name, create=True)
            out.append(wire.string(f"{text}:internal:{sign(key, url.rump)}"))
        self.send(b"* GENURLAUTH " + b" ".join(out))
        self._tagged(tag, b"OK", b"GENURLAUTH completed")

    def imap_URLFETCH(self, tag, cur):
        requests: list[tuple[bytes, list[bytes] | None]] = []
        while True:
            if cur.peek() == 0x28:
                items = cur.plist()
                if not items or not all(isinstance(i, bytes) for i in items):
                    raise ParseError("Bad URLFETCH parameters")
                params = [p.upper() for p in items[1:]]
                if any(p not in (b"BODY", b"BINARY", b"BODYPARTSTRUCTURE") for p in params):
                    raise ParseError("Unknown URLFETCH parameter")
                requests.append((items[0], params))
            else:
                requests.append((cur.astring(), None))
            if not cur.maybe(b" "):
                break
        cur.end()
        for raw_url, params in requests:
            self.send(b"* URLFETCH " + wire.string(raw_url) + b" " +
                      self._urlfetch(raw_url.decode("utf-8", "replace"), params))
        self._tagged(tag, b"OK", b"URLFETCH completed")

    def _urlfetch(self, text: str, params: list[bytes] | None) -> bytes:
        """The response data for one URL: NIL unless it is valid and authorized."""
        try:
            url = parse(text)
        except BadURL:
            return b"NIL"
        message = self._resolve(url)
        if message is None:
            return b"NIL"
        try:
            sec = wire.parse_section_text(url.section.encode()) if url.section else None
        except ParseError:
            return b"NIL"
        part = Part(message)
        if params is None:
            return self._body(part, sec, url) or b"NIL"
        items = []
        # Dovecot's order whatever the request's: BODYPARTSTRUCTURE, BODY, BINARY.
        order = {b"BODYPARTSTRUCTURE": 0, b"BODY": 1, b"BINARY": 2}
        for p in sorted(set(params), key=order.__getitem__):
            if p == b"BODY":
                data = self._body(part, sec, url)
                items.append(b"BODY " + (data or b"NIL"))
            elif p == b"BINARY":
                try:
                    content = None if sec is not None and sec.kind else \
                        binary_section(part, sec.part if sec else ())
                except UnknownCTE:
                    content = None
                if content is not None and url.partial is not None:
                    content = _partial(content, url.partial)
                items.append(b"BINARY " + (b"NIL" if content is None else
                                           wire.literal8(content)))
            else:
                items.append(b"BODYPARTSTRUCTURE " +
                             self._structure(part, sec, b"BINARY" in params))
        return b"(" + b" ".join(items) + b")"

    def _structure(self, part: Part, sec, binary: bool) -> bytes:
        """BODYPARTSTRUCTURE: of the decoded content when BINARY comes with it (RFC 5524)."""
        sub = part.subpart(sec.part) if sec is not None and sec.part else part
        if sub is None:
            return b"NIL"
        if binary:
            try:
                sub = Part(decode_tree(sub.data, keep_cte=True),
                           sub.maintype + b"/" + sub.subtype)
            except UnknownCTE:
                pass
        return bodystructure(sub, True)

    def _body(self, part: Part, sec, url: ImapURL) -> bytes | None:
        data = part.data if sec is None else part.section(sec.part, sec.kind, sec.fields)
        if data is None:
            return None
        if url.partial is not None:
            data = _partial(data, url.partial)
        return wire.literal(data)

    def _catenate_url(self, text: str) -> bytes | None:
        """
        What a CATENATE URL part names (RFC 4469 5), or None (BADURL): a
        relative URL (C{/mailbox/;UID=n...}) or an absolute one of the session's
        own user reads the user's folders; any other needs a valid URLAUTH.
        """
        if text.startswith("/"):
            text = f"imap://{quote(self.account.user, safe='')}@localhost{text}"
        try:
            url = parse(text)
            sec = wire.parse_section_text(url.section.encode()) if url.section else None
        except (BadURL, ParseError):
            return None
        if url.token is not None:
            message = self._resolve(url)
        elif url.user == self.account.user and url.access is None:
            message = self._own(url)
        else:
            return None
        if message is None:
            return None
        part = Part(message)
        data = part.data if sec is None else part.section(sec.part, sec.kind, sec.fields)
        if data is None:
            return None
        return data if url.partial is None else _partial(data, url.partial)

    def _own(self, url: ImapURL) -> bytes | None:
        """The message a URL names in the session's own folders, or None."""
        try:
            folder = self.account.folder(_mailbox(url.mailbox))
        except imap4.MailboxException:
            return None
        return _message_at(folder, url)

    def _resolve(self, url: ImapURL) -> bytes | None:
        """The message a signed URL names, or None (bad token, access, expiry, UID...)."""
        if url.user is None or url.token is None or (url.mechanism or "").upper() != MECHANISM:
            return None
        if url.expired(datetime.now(UTC)) or not url.allows(self.account.user):
            return None
        name = _mailbox(url.mailbox)
        try:
            key = self._keys(url.user).key(name)
            if key is None or not verify(key, url.rump, url.token):
                return None
            folder = self.account.store.folder(url.user, name)
        except (KeyError, ValueError, OSError):
            return None
        return _message_at(folder, url)

    def imap_RESETKEY(self, tag, cur):
        name = None
        if not cur.at_end():
            name = self._mailbox_name(cur)
            while cur.maybe(b" "):
                if cur.atom().upper().decode("ascii", "replace") != MECHANISM:
                    self._tagged(tag, b"NO", b"Unsupported URLAUTH mechanism")
                    return
        cur.end()
        if name is not None:
            self.account.folder(name)  # NoSuchFolder: NO
        self._keys(self.account.user).reset(name)
        self._tagged(tag, b"OK", b"RESETKEY completed")


def _partial(data: bytes, partial: tuple[int, int | None]) -> bytes:
    start, length = partial
    return data[start:] if length is None else data[start:start + length]


def _message_at(folder, url: ImapURL) -> bytes | None:
    """The message (wire form) at the URL's UID in C{folder}, or None (UIDVALIDITY, gone)."""
    if url.uidvalidity is not None and url.uidvalidity != folder.uidvalidity:
        return None
    folder.refresh()
    msg = folder.by_uid(url.uid)
    if msg is None:
        return None
    try:
        return folder.read_wire(msg)
    except (KeyError, OSError):
        return None
