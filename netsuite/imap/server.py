"""
The IMAP4rev1 session, on Twisted's L{imap4.IMAP4Server}.

Twisted's class keeps the role (states, timeout, the Portal, IAccount /
IMailbox avatars), but its command reader and several commands are wrong in
26.10 (see TWISTED-GAPS.md), so this subclass replaces:

  - the reader (L{netsuite.framer.IMAPFramer}): whole commands are assembled
    with their literals before anything runs; C{{n+}} (LITERAL+) is honoured; a
    literal over the limit is refused before a byte of it is read (a C{{n+}}
    one then closes the connection, RFC 7888), and a huge count never
    allocates; APPEND literals past L{STREAM_ABOVE} go straight into the
    folder's tmp/; a line or literal must be complete within the command
    deadline; overlong lines get BAD and the session goes on; NUL bytes are
    refused; input pipelined after STARTTLS is discarded; IDLE ends only on DONE;
  - argument parsing (L{netsuite.imap.wire}): quoted strings with escapes,
    nested lists, sequence sets, FETCH attributes and every SEARCH key;
  - FETCH (partial fetch applied, \\Seen set by BODY[]), STORE, SEARCH, COPY,
    MOVE, EXPUNGE, UID EXPUNGE, SELECT/EXAMINE response codes, and the
    extensions: IDLE, UIDPLUS, MOVE, NAMESPACE, SPECIAL-USE, LITERAL+, ENABLE,
    ID, UNSELECT, SASL-IR;
  - unsolicited updates: changes by other sessions, deliveries and other
    programs are queued by L{SessionMailbox} and sent where RFC 3501 7.4.1
    allows (EXPUNGE never during FETCH, STORE or SEARCH).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, interfaces, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import imap4

from netsuite.auth import sasl
from netsuite.config import plaintext_auth_allowed
from netsuite.deadline import CommandDeadline
from netsuite.durable import disk_full
from netsuite.framer import Command, Continue, DiscardSink, IMAPFramer, Overlong, Refused
from netsuite.imap import wire
from netsuite.imap.account import FolderExists, NoSuchFolder, canonical
from netsuite.imap.message import Part, bodystructure, decoded, envelope, sent_date
from netsuite.imap.wire import Cursor, ParseError, SeqSet
from netsuite.store.folder import FolderGone, Message

log = Logger(namespace="netsuite.imap")

IDENT = "netsuite IMAP4rev1 ready"
EXTENSIONS = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE",
              b"UNSELECT", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"CHILDREN"]

ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
UNAUTH = ANY | {"STARTTLS", "LOGIN", "AUTHENTICATE"}
AUTH = ANY | {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
              "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "IDLE", "ENABLE"}
SELECTED = AUTH | {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                   "MOVE", "UID"}
UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"}
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")

#: Messages rendered per reactor turn by FETCH.
FETCH_BATCH = 256

#: Messages per write (and per reactor turn) of a FETCH of UID/FLAGS only.
FLAGS_CHUNK = 4096

#: FLAGS renderings of keyword-less messages by their Maildir info letters (bounded).
_FLAG_BYTES: dict[str, bytes] = {}
#: The same for messages that are \Recent in the session.
_RECENT_FLAG_BYTES: dict[str, bytes] = {}

#: FETCH/STORE of a set in which another session expunged some messages: the rest are
#: answered and the command succeeds, Dovecot's words (its cmd-fetch.c).
EXPUNGE_ISSUED = b"[EXPUNGEISSUED] Some messages were already expunged."

#: APPEND literals from this size on are streamed into the folder's tmp/.
STREAM_ABOVE = 65536


class IMAPServer(imap4.IMAP4Server, CommandDeadline):
    """One IMAP connection; see the module docstring."""

    #: A TCP or TLS connection (C{startTLS}, C{disconnecting}, producers).
    transport: Any
    #: The client's L{netsuite.auth.throttle.PeerPortal}.
    portal: Any
    #: After login, the realm's account (L{netsuite.imap.account.Account}).
    account: Any
    #: The selected L{netsuite.imap.mailbox.SessionMailbox}, or None.
    mbox: Any

    def __init__(self, ctx, cfg, implicit_tls: bool = False):
        super().__init__(contextFactory=ctx.tls)
        self.ctx = ctx
        self.cfg = cfg
        self.tls = implicit_tls
        self.timeOut = cfg.login_timeout
        self.POSTAUTH_TIMEOUT = cfg.idle_timeout
        limits = getattr(ctx.config, "limits", None)
        self._framer = IMAPFramer(cfg.max_line_length, cfg.max_literal, cfg.max_message_size,
                                  timeout=getattr(limits, "command_timeout", 60),
                                  stream_above=STREAM_ABOVE, sink=self._literal_sink)
        #: "line", or "idle"/"sasl" while the next line is not a command.
        self._mode = "line"
        self._busy = False
        self._paused = False
        self._idle_tag: bytes | None = None
        self._sasl_tag: bytes | None = None
        self.mbox = None
        #: Set in connectionLost: callbacks that fire later must not act on the session.
        self._lost = False
        #: Long FETCH/SEARCH renderings, stopped if the connection goes.
        self._tasks: set = set()

    # -- connection ------------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.portal = self.ctx.portal.bind(self.peer, "imap")
        self.tags = {}
        self.setTimeout(self.timeOut)
        self.send(b"* OK [CAPABILITY " + b" ".join(self.capability_list()) + b"] " +
                  IDENT.encode())

    def connectionLost(self, reason):
        self._lost = True
        for t in list(self._tasks):
            try:
                t.stop()
            except (task.TaskDone, task.TaskFinished):  # finished in this very turn
                pass
        self.cancelDeadline()
        self._framer.reset()
        self._deselect()
        super().connectionLost(reason)

    def _cooperate(self, work):
        """
        Run C{work} a batch per reactor turn; stopped in connectionLost.

        The task is the transport's producer while it runs: it is paused while
        the client reads slower than the batches are written, so a huge FETCH
        never sits in memory as one unsent buffer.
        """
        t = task.cooperate(work)
        self._tasks.add(t)
        pacer = _Pacer(t)
        registered = False
        if getattr(self.transport, "producer", None) is None:
            try:
                self.transport.registerProducer(pacer, True)
                registered = True
            except RuntimeError:  # someone else produces: no pacing, as before
                pass

        def finished(result):
            self._tasks.discard(t)
            pacer.done = True
            if registered and not self._lost:
                self.transport.unregisterProducer()
            return result

        return t.whenDone().addBoth(finished)

    def timeoutConnection(self):
        self.send(b"* BYE Idle for too long, closing connection")
        self.transport.loseConnection()

    # -- the whole-line deadline (netsuite.deadline) ---------------------------------

    def deadlineFramer(self):
        return None if self.transport.disconnecting else self._framer.lines

    def deadlineWaiting(self) -> bool:
        return self._busy

    def deadlineExpired(self) -> None:
        log.info("command timeout: address={address}", address=self.peer)
        self.send(b"* BYE Command took too long, closing connection")
        self._framer.discard()
        self.transport.loseConnection()

    def send(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def plaintext_allowed(self) -> bool:
        return self.tls or plaintext_auth_allowed(self.ctx.config, "imap")

    def capability_list(self) -> list[bytes]:
        caps = list(EXTENSIONS)
        if self.state == "unauth":
            if not self.tls and self.ctx.tls is not None:
                caps.append(b"STARTTLS")
            if self.plaintext_allowed():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return caps

    # -- the reader --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.transport.disconnecting:
            return  # closing: nothing more is read into memory
        self.resetTimeout()
        self._framer.feed(data, self.deadlineNow())
        self._process()

    def _process(self) -> None:
        if self._paused and not self._busy:
            self._paused = False
            self._framer.lines.restart(self.deadlineNow())
            self.transport.resumeProducing()
        framer = self._framer
        while not self._busy and not self.transport.disconnecting:
            if self._mode != "line" and not framer.in_command:
                line = framer.lines.line()
                if line is None:
                    break
                if self._mode == "idle":
                    self._idle_line(b"" if isinstance(line, Overlong) else line)
                elif isinstance(line, Overlong):
                    tag, self._sasl_tag = self._sasl_tag or b"*", None
                    self._mode = "line"
                    self._tagged(tag, b"BAD", b"Authentication response too long")
                else:
                    self._sasl_line(line)
                continue
            event = framer.next()
            if event is None:
                break
            if isinstance(event, Command):
                self._execute(event.text, event.literals)
            elif isinstance(event, Continue):
                self.send(b"+ Ready for literal data")
            elif isinstance(event, Refused):
                tag = event.tag if wire.valid_tag(event.tag) else b"*"
                self._tagged(tag, event.status, event.text)
                if event.close:
                    self._framer.discard()
                    self.transport.loseConnection()
        # Paused only while a command waits, never while closing.
        if self._busy and not self.transport.disconnecting:
            if not self._paused:
                self._paused = True
                self.transport.pauseProducing()
        elif not self.transport.disconnecting:
            self.armDeadline()

    def _literal_sink(self, text: bytes, literals: list, size: int):
        """Where a big literal goes: an APPEND's into the target folder's tmp/."""
        try:
            _tag, cmd, rest = wire.split_tag(text)
        except ParseError:
            return None
        if cmd != b"APPEND":
            return None
        if self.state not in ("auth", "select"):
            return DiscardSink(b"APPEND not allowed now")
        try:
            folder = self.account.folder(self._mailbox_name(Cursor(rest, literals)))
        except Exception:
            return DiscardSink()  # the command fails when it runs; keep nothing
        incoming = getattr(folder, "incoming", None)
        return incoming() if incoming is not None else None

    # -- dispatch ------------------------------------------------------------------------

    def _execute(self, text: bytes, lits: list) -> None:
        try:
            self._run(text, lits)
        finally:
            for lit in lits:
                if not isinstance(lit, bytes):
                    lit.abort()  # a streamed literal the command did not deliver

    def _run(self, text: bytes, lits: list) -> None:
        try:
            tag, cmd, rest = wire.split_tag(text)
        except ParseError as e:
            tag = text.split(b" ", 1)[0]
            self._tagged(tag if wire.valid_tag(tag) else b"*", b"BAD", str(e).encode())
            return
        name = cmd.decode()
        uid = False
        allowed = {"unauth": UNAUTH, "auth": AUTH, "select": SELECTED}.get(self.state, set())
        if name == "UID" and name in allowed:
            sub, _, rest = rest.partition(b" ")
            name = sub.upper().decode("ascii", "replace")
            uid = True
            if name not in UID_COMMANDS:
                self._tagged(tag, b"BAD", b"Unknown UID command")
                return
        handler = getattr(self, f"imap_{name}", None)
        if handler is None:
            self._tagged(tag, b"BAD", b"Unknown command")
            return
        if name not in allowed:
            self._tagged(tag, b"BAD", f"{name} not allowed now".encode())
            return
        cur = Cursor(rest, list(lits))
        try:
            result = handler(tag, cur, uid) if name in UID_COMMANDS else handler(tag, cur)
        except ParseError as e:
            self._tagged(tag, b"BAD", str(e).encode())
            return
        except imap4.MailboxException as e:
            self._tagged(tag, b"NO", str(e).encode())
            return
        except FolderGone:
            self._deselect()
            self._tagged(tag, b"NO", b"[NONEXISTENT] Mailbox was deleted or renamed")
            return
        except Exception:
            log.failure("IMAP {command} failed", command=name)
            self._tagged(tag, b"NO", b"[SERVERBUG] Internal error")
            return
        if isinstance(result, defer.Deferred):
            self._busy = True

            def failed(f):
                if self._lost:
                    return  # stopped, or failed, after the client left: nobody to tell
                log.failure("IMAP {command} failed", f, command=name)
                self._tagged(tag, b"NO", b"[SERVERBUG] Internal error")

            def resume(_):
                self._busy = False
                if not self._lost:
                    self._process()

            result.addErrback(failed).addBoth(resume)

    def _tagged(self, tag: bytes, status: bytes, text: bytes, allow_expunge: bool = True) -> None:
        """Send pending unsolicited updates, then the tagged completion."""
        if self.mbox is not None and status != b"BAD":
            for line in self.mbox.updates(allow_expunge):
                self.send(line)
        self.send(tag + b" " + status + b" " + text)

    # -- any state ------------------------------------------------------------------------

    def imap_CAPABILITY(self, tag, cur):
        cur.end()
        self.send(b"* CAPABILITY " + b" ".join(self.capability_list()))
        self._tagged(tag, b"OK", b"CAPABILITY completed")

    def imap_NOOP(self, tag, cur):
        cur.end()
        if self.mbox is not None:
            self.mbox.refresh()
        self._tagged(tag, b"OK", b"NOOP completed")

    def imap_LOGOUT(self, tag, cur):
        cur.end()
        self.send(b"* BYE Logging out")
        self.send(tag + b" OK LOGOUT completed")
        self._deselect()
        self.state = "logout"
        self.transport.loseConnection()

    def imap_ID(self, tag, cur):
        if cur.maybe(b"NIL") or cur.maybe(b"nil"):
            pass
        else:
            params = cur.plist()
            if len(params) % 2 or len(params) > 60:
                raise ParseError("ID takes field/value pairs")
        cur.end()
        self.send(b'* ID ("name" "netsuite" "vendor" "netsuite")')
        self._tagged(tag, b"OK", b"ID completed")

    def imap_ENABLE(self, tag, cur):
        cur.atom()
        while cur.maybe(b" "):
            cur.atom()
        cur.end()
        # No extension that needs enabling (CONDSTORE, UTF8=ACCEPT) is offered.
        self.send(b"* ENABLED")
        self._tagged(tag, b"OK", b"ENABLE completed")

    # -- not authenticated ----------------------------------------------------------------

    def imap_STARTTLS(self, tag, cur):
        cur.end()
        if self.tls:
            self._tagged(tag, b"BAD", b"TLS already active")
            return
        if self.ctx.tls is None or interfaces.ITLSTransport(self.transport, None) is None:
            self._tagged(tag, b"NO", b"TLS not available")
            return
        self.send(tag + b" OK Begin TLS negotiation now")
        self.transport.startTLS(self.ctx.tls)
        self.tls = True
        # Commands pipelined in plain text after STARTTLS are never run (RFC 3501 6.2.1).
        self._framer.discard()

    def _privacy_required(self, tag) -> bool:
        if self.plaintext_allowed():
            return False
        self._tagged(tag, b"NO", b"[PRIVACYREQUIRED] Plaintext authentication disallowed "
                                 b"on non-secure connections; use STARTTLS")
        return True

    def imap_LOGIN(self, tag, cur):
        user = cur.astring()
        cur.sp()
        password = cur.astring()
        cur.end()
        if self._privacy_required(tag):
            return None
        return self._login(tag, user, password)

    def imap_AUTHENTICATE(self, tag, cur):
        mech = cur.atom().upper()
        initial = None
        if cur.maybe(b" "):
            initial = cur.astring()
        cur.end()
        if mech != b"PLAIN":
            self._tagged(tag, b"NO", b"Unsupported authentication mechanism")
            return None
        if self._privacy_required(tag):
            return None
        if initial is None:
            self._mode = "sasl"
            self._sasl_tag = tag
            self.send(b"+ ")
            return None
        return self._sasl_plain(tag, b"" if initial == b"=" else initial)

    def _sasl_line(self, line: bytes) -> None:
        tag, self._sasl_tag = self._sasl_tag or b"*", None
        self._mode = "line"
        if line.strip() == b"*":
            self._tagged(tag, b"BAD", b"Authentication cancelled")
            return
        d = self._sasl_plain(tag, line)
        if d is not None:
            self._busy = True
            d.addBoth(self._unbusy)

    def _unbusy(self, _=None):
        self._busy = False
        if not self._lost:
            self._process()

    def _sasl_plain(self, tag, response):
        try:
            authz, user, password = sasl.decode_plain(response)
        except sasl.SASLError as e:
            self._tagged(tag, b"BAD", str(e).encode())
            return None
        if authz and authz != user:
            self._tagged(tag, b"NO", b"[AUTHORIZATIONFAILED] Proxy authorization not supported")
            return None
        return self._login(tag, user, password)

    def _login(self, tag, user: bytes, password: bytes):
        self.setTimeout(None)
        d = self.portal.login(credentials.UsernamePassword(user, password), None, imap4.IAccount)

        def ok(result):
            iface, avatar, logout = result
            if self._lost or self.transport.disconnecting:
                logout()  # gone while the password was checked
                return
            self.account = avatar
            self._onLogout = logout
            self.state = "auth"
            self.setTimeout(self.POSTAUTH_TIMEOUT)
            self._tagged(tag, b"OK", b"[CAPABILITY " + b" ".join(self.capability_list()) +
                         b"] Logged in")

        def failed(f):
            if self._lost:
                return None
            self.setTimeout(self.cfg.login_timeout)  # setTimeout(None) cleared timeOut
            if f.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                self._tagged(tag, b"NO", b"[AUTHENTICATIONFAILED] Authentication failed")
            else:
                log.failure("IMAP login", f)
                self._tagged(tag, b"NO", b"[UNAVAILABLE] Temporary server failure")

        return d.addCallbacks(ok, failed)

    # -- authenticated ----------------------------------------------------------------------

    def _mailbox_name(self, cur) -> str:
        raw = cur.astring()
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise imap4.MailboxException(
                "Mailbox names must be modified UTF-7 (RFC 3501 5.1.3)") from None
        return canonical(name)

    def _deselect(self) -> None:
        if self.mbox is not None:
            self.mbox.on_change = None
            self.mbox.close()
            self.mbox = None
        if self.state == "select":
            self.state = "auth"

    def _select(self, tag, cur, rw: bool):
        name = self._mailbox_name(cur)
        cur.end()
        self._deselect()
        # A folder not in memory yet is read in a thread (a first open lists it all).
        mbox = self.account.select_deferred(name, rw)
        if isinstance(mbox, defer.Deferred):
            return mbox.addCallbacks(self._selected, self._select_failed,
                                     callbackArgs=(tag, rw), errbackArgs=(tag,))
        return self._selected(mbox, tag, rw)

    def _select_failed(self, failure, tag) -> None:
        failure.trap(FolderGone)
        if not self._lost:
            self._tagged(tag, b"NO", b"[NONEXISTENT] Mailbox was deleted or renamed")

    def _selected(self, mbox, tag, rw: bool) -> None:
        if self._lost:  # the client left while the folder was read
            if mbox is not None:
                mbox.close()
            return
        if mbox is None:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        self.mbox = mbox
        self.state = "select"
        mbox.on_change = self._mailbox_changed
        flags = " ".join(mbox.all_flags()).encode()
        self.send(b"* FLAGS (" + flags + b")")
        if rw:
            self.send(b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted")
        else:
            self.send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
        self.send(b"* %d EXISTS" % len(mbox.uids))
        self.send(b"* %d RECENT" % len(mbox.recent))
        unseen = mbox.unseen_first()
        if unseen:
            self.send(b"* OK [UNSEEN %d] First unseen" % unseen)
        self.send(b"* OK [UIDVALIDITY %d] UIDs valid" % mbox.uidvalidity)
        self.send(b"* OK [UIDNEXT %d] Predicted next UID" % mbox.next_uid)
        mode = b"[READ-WRITE] SELECT" if rw else b"[READ-ONLY] EXAMINE"
        self.send(tag + b" OK " + mode + b" completed")

    def imap_SELECT(self, tag, cur):
        return self._select(tag, cur, True)

    def imap_EXAMINE(self, tag, cur):
        return self._select(tag, cur, False)

    def imap_CREATE(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.end()
        if name == "INBOX":
            self._tagged(tag, b"NO", b"[ALREADYEXISTS] INBOX always exists")
            return
        try:
            self.account.create(name)
        except FolderExists as e:
            self._tagged(tag, b"NO", b"[ALREADYEXISTS] " + str(e).encode())
            return
        self._tagged(tag, b"OK", b"CREATE completed")

    def imap_DELETE(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.end()
        if self.mbox is not None and self.mbox.name == name:
            self._deselect()
        try:
            self.account.delete(name)
        except NoSuchFolder as e:
            self._tagged(tag, b"NO", b"[NONEXISTENT] " + str(e).encode())
            return
        self._tagged(tag, b"OK", b"DELETE completed")

    def imap_RENAME(self, tag, cur):
        old = self._mailbox_name(cur)
        cur.sp()
        new = self._mailbox_name(cur)
        cur.end()
        try:
            self.account.rename(old, new)
        except NoSuchFolder as e:
            self._tagged(tag, b"NO", b"[NONEXISTENT] " + str(e).encode())
            return
        except FolderExists as e:
            self._tagged(tag, b"NO", b"[ALREADYEXISTS] " + str(e).encode())
            return
        self._tagged(tag, b"OK", b"RENAME completed")

    def imap_SUBSCRIBE(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.end()
        self.account.folder(name)
        self.account.subscribe(name)
        self._tagged(tag, b"OK", b"SUBSCRIBE completed")

    def imap_UNSUBSCRIBE(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.end()
        self.account.unsubscribe(name)
        self._tagged(tag, b"OK", b"UNSUBSCRIBE completed")

    def _list(self, tag, cur, subscribed: bool, verb: bytes):
        special_only = False
        if not subscribed and cur.peek() == 0x28:
            options = [o.upper() for o in cur.plist() if isinstance(o, bytes)]
            unknown = set(options) - {b"SPECIAL-USE", b"SUBSCRIBED"}
            if unknown:
                raise ParseError("Unsupported LIST selection option")
            special_only = b"SPECIAL-USE" in options
            subscribed = b"SUBSCRIBED" in options
            cur.sp()
        ref = cur.astring().decode("ascii", "replace")
        cur.sp()
        pattern = cur.list_mailbox().decode("ascii", "replace")
        cur.end()
        if not pattern:
            self.send(b'* ' + verb + b' (\\Noselect) "." ""')
            self._tagged(tag, b"OK", verb + b" completed")
            return
        for name, attrs in self.account.listing(ref, pattern, subscribed):
            if special_only and not any(a in ("\\Sent", "\\Drafts", "\\Trash", "\\Junk")
                                        for a in attrs):
                continue
            self.send(b"* " + verb + b" (" + " ".join(attrs).encode() + b') "." ' +
                      wire.astring(name))
        self._tagged(tag, b"OK", verb + b" completed")

    def imap_LIST(self, tag, cur):
        self._list(tag, cur, False, b"LIST")

    def imap_LSUB(self, tag, cur):
        self._list(tag, cur, True, b"LSUB")

    def imap_STATUS(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.sp()
        items = [i.upper().decode() for i in cur.plist() if isinstance(i, bytes)]
        cur.end()
        if not items or any(i not in STATUS_ITEMS for i in items):
            raise ParseError("Unknown STATUS item")
        try:
            values = self.account.status(name, items)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        body = " ".join(f"{k} {values[k]}" for k in items).encode()
        self.send(b"* STATUS " + wire.astring(name) + b" (" + body + b")")
        self._tagged(tag, b"OK", b"STATUS completed")

    def imap_APPEND(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.sp()
        flags: list[str] = []
        date = None
        if cur.peek() == 0x28:
            flags = cur.flag_list()
            cur.sp()
        if cur.peek() == 0x22:
            date = wire.parse_datetime(cur.quoted())
            cur.sp()
        if cur.peek() != wire.LITERAL_MARK:
            raise ParseError("APPEND needs the message as a literal")
        data = cur.string()
        cur.end()
        if any(f.lower() == "\\recent" for f in flags):
            raise ParseError("\\Recent cannot be set")
        try:
            folder = self.account.folder(name)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
            return
        if isinstance(data, DiscardSink):
            self._tagged(tag, b"NO", data.why or b"[TRYCREATE] No such mailbox")
            return
        streamed = not isinstance(data, bytes)
        if not (data.wire_size if streamed and data.error is None else data):
            self._tagged(tag, b"NO", b"Empty message")
            return
        try:
            if streamed:  # already in tmp/: delivered by rename, never read back
                uid = folder.append_incoming(data, flags, date)
            else:
                uid = folder.append(data, flags, date)
        except OSError as e:
            log.warn("IMAP APPEND to {folder} failed: {error}", folder=name, error=e)
            if disk_full(e):  # APPEND says OVERQUOTA (RFC 5530)
                self._tagged(tag, b"NO", b"[OVERQUOTA] Mailbox is full")
            else:
                self._tagged(tag, b"NO", b"[SERVERBUG] Could not store the message")
            return
        self._tagged(tag, b"OK", b"[APPENDUID %d %d] APPEND completed" % (folder.uidvalidity, uid))

    def imap_NAMESPACE(self, tag, cur):
        cur.end()
        self.send(b'* NAMESPACE (("" ".")) NIL NIL')
        self._tagged(tag, b"OK", b"NAMESPACE completed")

    def imap_IDLE(self, tag, cur):
        cur.end()
        self._mode = "idle"
        self._idle_tag = tag
        self.send(b"+ idling")
        self._push_updates()

    def _idle_line(self, line: bytes) -> None:
        if line.strip().upper() != b"DONE":
            self.send(b"* BAD Expected DONE")
            return
        tag, self._idle_tag = self._idle_tag or b"*", None
        self._mode = "line"
        self._tagged(tag, b"OK", b"IDLE terminated")

    def _mailbox_changed(self) -> None:
        if self._mode == "idle":
            self._push_updates()

    def _push_updates(self) -> None:
        if self.mbox is not None:
            for line in self.mbox.updates(True):
                self.send(line)

    # -- selected -------------------------------------------------------------------------

    def imap_CHECK(self, tag, cur):
        cur.end()
        self.mbox.refresh()
        self._tagged(tag, b"OK", b"CHECK completed")

    def imap_CLOSE(self, tag, cur):
        cur.end()
        mbox = self.mbox
        if mbox.writeable:
            mbox.on_change = None
            mbox.expunge_uids(mbox.deleted())
        self._deselect()
        self.send(tag + b" OK CLOSE completed")

    def imap_UNSELECT(self, tag, cur):
        cur.end()
        self._deselect()
        self.send(tag + b" OK UNSELECT completed")

    def _targets(self, seqset: SeqSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set (message numbers or UIDs) in this session."""
        uids = self.mbox.uids
        if uid:
            return seqset.resolve(uids, uids[-1] if uids else 0)
        count = len(uids)
        for a, b in seqset.ranges:
            for n in (a, b):
                if n is not None and n > count:
                    raise ParseError("Message sequence number out of range")
        if not count:
            return []
        if seqset.ranges in ([(1, None)], [(None, 1)]):
            return list(uids)
        return [uids[n - 1] for n in seqset.resolve(range(1, count + 1), count)]

    def imap_EXPUNGE(self, tag, cur, uid=False):
        which = None
        if uid:
            which = set(self._targets(cur.seqset(), True))
        cur.end()
        if not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        doomed = [u for u in self.mbox.deleted() if which is None or u in which]
        self.mbox.expunge_uids(doomed)
        self._tagged(tag, b"OK", b"EXPUNGE completed")

    # FETCH

    def imap_FETCH(self, tag, cur, uid=False):
        seqset = cur.seqset()
        cur.sp()
        atts = wire.parse_fetch_atts(cur)
        cur.end()
        if uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, wire.FetchAtt("UID"))
        targets = self._targets(seqset, uid)
        mbox = self.mbox
        marks_seen = mbox.writeable and any(
            a.section is not None and not a.section.peek for a in atts)
        add_flags = set()
        if marks_seen:
            unseen = [m for m in mbox.messages(targets) if not m.has("\\Seen")]
            if unseen:
                mbox.set_flags(unseen, ["\\Seen"], 1)
                if not any(a.name == "FLAGS" for a in atts):
                    add_flags = {m.uid for m in unseen}
        missing = []

        def done(_):
            if missing:  # as Dovecot: the remaining messages were answered (RFC 2180 4.1.2)
                self._tagged(tag, b"OK", EXPUNGE_ISSUED, allow_expunge=uid)
            else:
                self._tagged(tag, b"OK", b"FETCH completed", allow_expunge=uid)

        if all(a.name in ("UID", "FLAGS") for a in atts):
            # The common "what changed" FETCH: from the index only, a few big writes.
            chunks = self._fetch_flags(targets, atts, missing)
            if len(targets) <= FLAGS_CHUNK:
                for chunk in chunks:
                    self.transport.write(chunk)
                done(None)
                return None

            def write_chunks():
                for chunk in chunks:
                    self.transport.write(chunk)
                    yield None

            return self._cooperate(write_chunks()).addCallback(done)

        def render():
            out = []
            for u in targets:
                msg = mbox.message(u)
                seq = mbox.seq(u)
                if msg is None or not seq:
                    missing.append(u)
                    continue
                try:
                    out.append(self._fetch_one(mbox, seq, msg, atts, u in add_flags))
                except KeyError:
                    missing.append(u)
                if len(out) >= FETCH_BATCH:
                    mbox.flush_cache()
                    self.transport.writeSequence(out)
                    out = []
                    yield None
            mbox.flush_cache()
            if out:
                self.transport.writeSequence(out)

        if len(targets) <= FETCH_BATCH:
            for _ in render():
                pass
            done(None)
            return None
        return self._cooperate(render()).addCallback(done)

    def _fetch_flags(self, targets: list[int], atts, missing: list[int]) -> Iterator[bytes]:
        """
        FETCH of UID and/or FLAGS only, from the index: the responses of
        L{FLAGS_CHUNK} messages joined into one bytes string at a time (one
        transport write each, not one per message).  The per-message work is
        a template and a flag rendering looked up by the file name's info
        letters (L{_FLAG_BYTES}).
        """
        mbox = self.mbox
        order = tuple(a.name for a in atts)
        render = self._flag_renderer()
        # Snapshot: another session may change the folder between two chunks.
        msgs = mbox.snapshot() if targets == mbox.uids else None
        if msgs is not None:
            shared = mbox.rendered()
            version = shared.version if shared is not None else -1
            for start in range(0, len(msgs), FLAGS_CHUNK):
                key = (order, start, len(msgs))
                data = shared.chunks.get(key) \
                    if shared is not None and shared.version == version else None
                if data is None:
                    data = _flags_lines(order, enumerate(msgs[start:start + FLAGS_CHUNK],
                                                         start + 1), render)
                    if shared is not None and shared.version == version:
                        shared.chunks[key] = data  # nothing changed since the snapshot
                yield data
            return
        found: list[tuple[int, Message]] = []
        for u in targets:
            msg = mbox.message(u)
            seq = mbox.seq(u)
            if msg is None or not seq:
                missing.append(u)
            else:
                found.append((seq, msg))
        for start in range(0, len(found), FLAGS_CHUNK):
            yield _flags_lines(order, found[start:start + FLAGS_CHUNK], render)

    def _flag_renderer(self) -> Callable[[Message], bytes]:
        """C{msg -> b"(\\Seen ...)"} for this session: shared renderings by info letters."""
        recent = self.mbox.recent
        flag_list = self.mbox.flag_list

        def render(msg: Message) -> bytes:
            if msg.keywords:
                return ("(" + " ".join(flag_list(msg)) + ")").encode("utf-8", "replace")
            letters = msg.name.partition(":2,")[2]
            if msg.uid in recent:  # a first open: every message is \Recent
                flags = _RECENT_FLAG_BYTES.get(letters)
                if flags is None:
                    flags = ("(" + " ".join(flag_list(msg)) + ")").encode("utf-8", "replace")
                    if len(_RECENT_FLAG_BYTES) < 4096:
                        _RECENT_FLAG_BYTES[letters] = flags
                return flags
            flags = _FLAG_BYTES.get(letters)
            if flags is None:
                flags = ("(" + " ".join(msg.flags) + ")").encode("utf-8", "replace")
                if len(_FLAG_BYTES) < 4096:
                    _FLAG_BYTES[letters] = flags
            return flags

        return render

    def _fetch_one(self, mbox, seq: int, msg, atts, add_flags: bool) -> bytes:
        items = []
        part = None
        raw = None
        for att in atts:
            name = att.name
            if name == "UID":
                items.append(b"UID %d" % msg.uid)
            elif name == "FLAGS":
                items.append(b"FLAGS " + mbox.flag_bytes(msg))
            elif name == "INTERNALDATE":
                items.append(b"INTERNALDATE " + wire.format_datetime(mbox.date_of(msg)))
            elif name == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % mbox.size_of(msg))
            elif name == "SECTION" and not att.section.part and att.section.kind == "" and \
                    part is None:
                # BODY[] / RFC822: the whole message, no MIME parsing needed.
                sec = att.section
                if raw is None:
                    raw = mbox.read(msg)
                data = raw if sec.partial is None else \
                    raw[sec.partial[0]:sec.partial[0] + sec.partial[1]]
                items.append(wire.section_label(sec) + b" " + wire.literal(data))
            else:
                sec = att.section
                field = _cache_field(att)
                value = None if field is None else mbox.cached(msg, field)
                if value is None:
                    if part is None:
                        part = Part(raw if raw is not None else mbox.read(msg))
                    if name == "ENVELOPE":
                        value = envelope(part)
                    elif name == "BODYSTRUCTURE":
                        value = bodystructure(part, True)
                    elif name == "BODY":
                        value = bodystructure(part, False)
                    else:
                        # A part that does not exist is empty, as in Dovecot.
                        value = part.section(sec.part, sec.kind, sec.fields) or b""
                    if field is not None:
                        mbox.remember(msg, field, value)
                if name in ("ENVELOPE", "BODYSTRUCTURE", "BODY"):
                    items.append(name.encode() + b" " + value)
                else:
                    if sec.partial is not None:
                        start, length = sec.partial
                        value = value[start:start + length]
                    items.append(wire.section_label(sec) + b" " + wire.literal(value))
        if add_flags:
            items.append(b"FLAGS " + mbox.flag_bytes(msg))
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

    # STORE

    def imap_STORE(self, tag, cur, uid=False):
        seqset = cur.seqset()
        cur.sp()
        item = cur.atom().upper()
        cur.sp()
        flags = cur.flag_list()
        cur.end()
        base, _, silent = item.partition(b".")
        if silent not in (b"", b"SILENT"):
            raise ParseError("Bad STORE item")
        mode = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}.get(base)
        if mode is None:
            raise ParseError("Bad STORE item")
        targets = self._targets(seqset, uid)
        if not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only", allow_expunge=uid)
            return
        mbox = self.mbox
        msgs = mbox.messages(targets)
        mbox.set_flags(msgs, flags, mode)
        if not silent:
            for m in msgs:
                seq = mbox.seq(m.uid)
                if seq:
                    uidpart = b" UID %d" % m.uid if uid else b""
                    self.send(b"* %d FETCH (FLAGS %s%s)" % (seq, mbox.flag_bytes(m), uidpart))
        if len(msgs) < len(targets):
            self._tagged(tag, b"OK", EXPUNGE_ISSUED, allow_expunge=uid)
        else:
            self._tagged(tag, b"OK", b"STORE completed", allow_expunge=uid)

    # COPY / MOVE

    def _copy(self, tag, cur, uid: bool, move: bool):
        seqset = cur.seqset()
        cur.sp()
        name = self._mailbox_name(cur)
        cur.end()
        targets = self._targets(seqset, uid)
        if move and not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        try:
            dest = self.account.folder(name)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
            return
        src = self.mbox
        msgs = src.messages(targets)
        pairs = src.copy_to(msgs, dest) if not (move and src.holds(dest)) else []
        code = b""
        if pairs:
            code = b"[COPYUID %d %s %s] " % (dest.uidvalidity,
                                             compress([p[0] for p in pairs]),
                                             compress([p[1] for p in pairs]))
        if move:
            if code:
                self.send(b"* OK " + code + b"Moved")
            src.expunge_uids([p[0] for p in pairs])
            self._tagged(tag, b"OK", b"MOVE completed")
        else:
            self._tagged(tag, b"OK", code + b"COPY completed", allow_expunge=uid)

    def imap_COPY(self, tag, cur, uid=False):
        self._copy(tag, cur, uid, move=False)

    def imap_MOVE(self, tag, cur, uid=False):
        self._copy(tag, cur, uid, move=True)

    # SEARCH

    def imap_SEARCH(self, tag, cur, uid=False):
        if cur.text[cur.pos:cur.pos + 8].upper() == b"CHARSET ":
            cur.pos += 8
            charset = cur.astring().upper()
            cur.sp()
            if charset not in (b"US-ASCII", b"UTF-8"):
                self._tagged(tag, b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                             allow_expunge=uid)
                return
        keys = wire.parse_search(cur)
        mbox = self.mbox
        uids = list(mbox.uids)
        found: list[int] = []
        star_seq = len(uids)
        star_uid = uids[-1] if uids else 0

        def scan():
            for seq, u in enumerate(uids, 1):
                msg = mbox.message(u)
                if msg is not None:
                    ctx = _SearchContext(mbox, seq, msg, star_seq, star_uid)
                    if all(ctx.match(k) for k in keys):
                        found.append(u if uid else seq)
                if seq % FETCH_BATCH == 0:
                    yield None

        def done(_=None):
            self.send(b"* SEARCH" + b"".join(b" %d" % n for n in found))
            self._tagged(tag, b"OK", b"SEARCH completed", allow_expunge=uid)

        if len(uids) <= FETCH_BATCH:
            for _ in scan():
                pass
            done()
            return None
        # A big folder is searched a batch per reactor turn: other sessions go on.
        return self._cooperate(scan()).addCallback(done)


def _flags_lines(order: tuple[str, ...], pairs: Iterable[tuple[int, Message]],
                 render: Callable[[Message], bytes]) -> bytes:
    """The FETCH responses of (seq, message) pairs for UID and/or FLAGS, joined."""
    if order == ("UID", "FLAGS"):
        return b"".join([b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, m.uid, render(m))
                         for seq, m in pairs])
    if order == ("FLAGS",):
        return b"".join([b"* %d FETCH (FLAGS %s)\r\n" % (seq, render(m)) for seq, m in pairs])
    if order == ("UID",):
        return b"".join([b"* %d FETCH (UID %d)\r\n" % (seq, m.uid) for seq, m in pairs])
    return b"".join([b"* %d FETCH (" % seq + b" ".join(
        b"UID %d" % m.uid if name == "UID" else b"FLAGS " + render(m)
        for name in order) + b")\r\n" for seq, m in pairs])


class _Pacer:
    """Pauses a cooperative task while the transport's send buffer is full (IPushProducer)."""

    def __init__(self, task: task.CooperativeTask):
        self.task = task
        self.paused = False
        self.done = False

    def pauseProducing(self) -> None:
        if not self.paused and not self.done:
            self.paused = True
            self.task.pause()

    def resumeProducing(self) -> None:
        if self.paused and not self.done:
            self.paused = False
            self.task.resume()

    def stopProducing(self) -> None:
        # The connection is going: IMAPServer.connectionLost stops the task.
        self.done = True


class _SearchContext:
    """Evaluates search keys for one message, reading its file only if a key needs it."""

    def __init__(self, mbox, seq: int, msg, star_seq: int, star_uid: int):
        self.mbox = mbox
        self.seq = seq
        self.msg = msg
        self.star_seq = star_seq
        self.star_uid = star_uid
        self._part: Part | None = None

    @property
    def part(self) -> Part:
        if self._part is None:
            try:
                self._part = Part(self.mbox.read(self.msg))
            except KeyError:
                self._part = Part(b"\r\n")
        return self._part

    def _text(self, value: bytes) -> str:
        return value.decode("utf-8", "replace").lower()

    def match(self, key) -> bool:
        op = key[0]
        m = self.msg
        mbox = self.mbox
        if op == "ALL":
            return True
        if op == "AND":
            return all(self.match(k) for k in key[1])
        if op == "NOT":
            return not self.match(key[1])
        if op == "OR":
            return self.match(key[1]) or self.match(key[2])
        if op == "SEQ":
            return key[1].contains(self.seq, self.star_seq)
        if op == "UID":
            return key[1].contains(m.uid, self.star_uid)
        flag = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
                "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
        if op in flag:
            return m.has(flag[op])
        if op.startswith("UN") and op[2:] in flag:
            return not m.has(flag[op[2:]])
        if op == "KEYWORD":
            return m.has(key[1])
        if op == "UNKEYWORD":
            return not m.has(key[1])
        if op == "RECENT":
            return m.uid in mbox.recent
        if op == "OLD":
            return m.uid not in mbox.recent
        if op == "NEW":
            return m.uid in mbox.recent and not m.has("\\Seen")
        if op == "LARGER":
            return mbox.size_of(m) > key[1]
        if op == "SMALLER":
            return mbox.size_of(m) < key[1]
        if op in ("BEFORE", "ON", "SINCE"):
            day = dt.date.fromtimestamp(mbox.date_of(m))
            return _compare_date(op, day, key[1])
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = sent_date(self.part)
            return day is not None and _compare_date(op[4:], day, key[1])
        if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = self._text(key[1])
            return any(needle in decoded(v).lower() for v in self.part.get_all(op.lower().encode()))
        if op == "HEADER":
            name = key[1].lower()
            needle = self._text(key[2])
            values = self.part.get_all(name)
            return bool(values) and any(needle in decoded(v).lower() for v in values)
        if op == "BODY":
            return self._text(key[1]) in self._text(self.part.body)
        if op == "TEXT":
            needle = self._text(key[1])
            return needle in self._text(self.part.data) or any(
                needle in decoded(v).lower() for _, v in self.part.fields)
        raise ParseError(f"Unknown search key {op}")


def _cache_field(att) -> str | None:
    """
    The message-cache field (netsuite.store.cache) of a FETCH item computed from the
    message's bytes, or None if it is not cached: ENVELOPE, BODY, BODYSTRUCTURE and the
    top-level header sections that clients ask for in every message list.  The names
    carry a version: a change to how one renders must change its name.
    """
    name = att.name
    if name == "ENVELOPE":
        return "envelope1"
    if name == "BODYSTRUCTURE":
        return "bodystructure1"
    if name == "BODY":
        return "body1"
    sec = att.section
    if sec is not None and not sec.part and sec.kind in ("HEADER", "HEADER.FIELDS",
                                                         "HEADER.FIELDS.NOT"):
        return ("h1:" + sec.kind + " " +
                " ".join(f.decode("ascii", "replace") for f in sec.fields))
    return None


def _compare_date(op: str, day, ref) -> bool:
    if op == "BEFORE":
        return day < ref
    if op == "ON":
        return day == ref
    return day >= ref


def compress(numbers: list[int]) -> bytes:
    """[1, 2, 3, 5] -> b"1:3,5" (order kept: COPYUID pairs source and destination)."""
    out = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"{start}:{prev}" if start != prev else f"{start}")
        start = prev = n
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else f"{start}")
    return ",".join(out).encode()


class IMAPFactory(Factory):
    """Builds L{IMAPServer} for one listener."""

    def __init__(self, ctx, implicit_tls: bool = False):
        self.ctx = ctx
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr):
        p = IMAPServer(self.ctx, self.ctx.config.imap, self.implicit_tls)
        p.factory = self
        return p
