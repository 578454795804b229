"""
The IMAP4rev1 session, on Twisted's L{imap4.IMAP4Server}.

Twisted's class keeps the role (states, timeout, the Portal; the avatar is
netsuite's L{netsuite.imap.account.IImapAccount}), but its command reader and
several commands are wrong in 26.10 (see TWISTED-GAPS.md), so this subclass
replaces:

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
    extensions listed in L{EXTENSIONS} (docs/imap.md says what each covers);
  - unsolicited updates: changes by other sessions, deliveries and other
    programs are queued by L{SessionMailbox} and sent where RFC 3501 7.4.1
    allows (EXPUNGE never during FETCH, STORE or SEARCH).

This module keeps the session: its state, the reader and the dispatch.  The
commands live by group in L{netsuite.imap.commands} (general, login,
mailboxes, append, fetch, flags, copy, search), mixed into L{IMAPServer}.
IMAP4rev2 (RFC 9051) is offered too: what a session that enabled it is answered
differently is in L{netsuite.imap.commands.rev2}.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from netsuite import metrics
from netsuite.config import plaintext_auth_allowed
from netsuite.deadline import CommandDeadline
from netsuite.framer import Command, Continue, IMAPFramer, Overlong, Refused
from netsuite.imap import names, wire
from netsuite.imap.account import FolderExists, NoSuchFolder, canonical
from netsuite.imap.commands.append import STREAM_ABOVE, AppendCommands
from netsuite.imap.commands.compress import CompressCommands
from netsuite.imap.commands.context import ContextCommands
from netsuite.imap.commands.copy import CopyCommands
from netsuite.imap.commands.fetch import FetchCommands
from netsuite.imap.commands.flags import FlagCommands
from netsuite.imap.commands.general import GeneralCommands
from netsuite.imap.commands.listext import ListExtCommands
from netsuite.imap.commands.login import LoginCommands
from netsuite.imap.commands.mailboxes import MailboxCommands
from netsuite.imap.commands.notify import NotifyCommands
from netsuite.imap.commands.quota import QuotaCommands
from netsuite.imap.commands.rev2 import Rev2Commands
from netsuite.imap.commands.search import SearchCommands
from netsuite.imap.commands.sort import SortCommands
from netsuite.imap.commands.urlauth import UrlAuthCommands
from netsuite.imap.compress import Inflater
from netsuite.imap.wire import Cursor, ParseError, SeqSet
from netsuite.shutdown import IGracefulStop, StopWhenIdle
from netsuite.store.folder import FolderGone

log = Logger(namespace="netsuite.imap")

IDENT = "netsuite IMAP4rev1 ready"
EXTENSIONS = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE",
              b"UNSELECT", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"CHILDREN",
              b"BINARY", b"URLAUTH", b"URLAUTH=BINARY"]
EXTENSIONS.insert(1, b"IMAP4rev2")  # RFC 9051, beside IMAP4rev1: see commands/rev2.py
EXTENSIONS += [b"LIST-EXTENDED"]
EXTENSIONS += [b"LIST-STATUS"]
EXTENSIONS += [b"STATUS=SIZE"]
EXTENSIONS += [b"QUOTA", b"QUOTA=RES-STORAGE"]
EXTENSIONS += [b"MULTIAPPEND"]
EXTENSIONS += [b"CATENATE"]
EXTENSIONS += [b"NOTIFY"]
EXTENSIONS += [b"OBJECTID"]
EXTENSIONS += [b"SAVEDATE"]
EXTENSIONS.append(b"CONDSTORE")
EXTENSIONS.append(b"QRESYNC")
EXTENSIONS += [b"SORT"]
EXTENSIONS += [b"SORT=DISPLAY"]
EXTENSIONS += [b"THREAD=ORDEREDSUBJECT"]
EXTENSIONS += [b"THREAD=REFERENCES"]
EXTENSIONS += [b"ESEARCH"]
EXTENSIONS += [b"ESORT"]
EXTENSIONS += [b"SEARCHRES"]
EXTENSIONS += [b"CONTEXT=SEARCH"]
EXTENSIONS += [b"CONTEXT=SORT"]
EXTENSIONS += [b"UTF8=ACCEPT"]

ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
UNAUTH = ANY | {"STARTTLS", "LOGIN", "AUTHENTICATE"}
AUTH = ANY | {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
              "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "IDLE", "ENABLE", "COMPRESS",
              "GENURLAUTH", "URLFETCH", "RESETKEY"}
SELECTED = AUTH | {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                   "MOVE", "UID"}
SELECTED |= {"SORT", "THREAD", "CANCELUPDATE"}
UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"}
AUTH |= {"GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "NOTIFY"}
SELECTED |= {"GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "NOTIFY"}
UID_COMMANDS |= {"SORT", "THREAD"}


@implementer(IGracefulStop)
class IMAPServer(StopWhenIdle, GeneralCommands, LoginCommands, ListExtCommands,
                 MailboxCommands, AppendCommands, FetchCommands,
                 FlagCommands, CopyCommands, SearchCommands, SortCommands, ContextCommands,
                 QuotaCommands, CompressCommands, UrlAuthCommands, NotifyCommands,
                 Rev2Commands, imap4.IMAP4Server, CommandDeadline):
    """
    One IMAP connection; see the module docstring.

    This class keeps the session's state, the reader and the dispatch; the
    commands are mixins by group from L{netsuite.imap.commands}.
    """

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
        #: A command is being run (synchronously): NOTIFY pushes wait for its end.
        self._executing = False
        #: After COMPRESS DEFLATE: the compressed input not yet read.
        self._inflater: Inflater | None = None
        #: Extensions turned on by ENABLE or first use (CONDSTORE), see commands.general.
        self.enabled: set[bytes] = set()
        #: Set in connectionLost: callbacks that fire later must not act on the session.
        self._lost = False
        #: The server is stopping: BYE once no command is in progress.
        self._stopping = False
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
        self._notify_stop()
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

    # -- graceful stop (netsuite.shutdown) ---------------------------------------------

    # SIGTERM: the command in progress (and a literal being sent) finishes, then BYE.

    def _in_progress(self) -> bool:
        return bool(self._busy or self._framer.in_command)

    def _goodbye(self) -> None:
        log.info("shutdown: address={address}, BYE", address=self.peer)
        self.send(b"* BYE Server shutting down")
        self._framer.discard()
        self.transport.loseConnection()

    # -- the whole-line deadline (netsuite.deadline) ---------------------------------

    def deadlineFramer(self):
        return None if self.transport.disconnecting else self._framer.lines

    def deadlineWaiting(self) -> bool:
        return self._busy

    def deadlineExpired(self) -> None:
        log.info("command timeout: address={client}", client=self.peer, protocol="imap",
                 event="timeout", reason="command_timeout")
        self.send(b"* BYE Command took too long, closing connection")
        self._framer.discard()
        self.transport.loseConnection()

    def send(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def plaintext_allowed(self) -> bool:
        return self.tls or plaintext_auth_allowed(self.ctx.config, "imap")

    def capability_list(self) -> list[bytes]:
        caps = list(EXTENSIONS)
        caps.append(b"APPENDLIMIT=%d" % self.cfg.max_message_size)  # RFC 7889
        if self.state != "unauth":
            caps.append(b"COMPRESS=DEFLATE")
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
        if self._inflater is not None:
            self._inflater.feed(data)  # inflated a piece at a time by _refill
        else:
            self._framer.feed(data, self.deadlineNow())
        self._process()

    def _refill(self) -> bool:
        """
        Under COMPRESS, give the reader the next inflated piece; False when there
        is none.  Only called when the reader needs more, so what one compressed
        burst expands to is never buffered whole.
        """
        inflater = self._inflater
        if inflater is None or not inflater.pending:
            return False
        try:
            data = inflater.next()
        except zlib.error as e:
            log.info("compression error: address={address}: {error}", address=self.peer,
                     error=e)
            self._inflater = Inflater()  # nothing more is read
            self.send(b"* BYE Compression error")
            self.transport.loseConnection()
            return False
        self._framer.feed(data, self.deadlineNow())
        return True

    def _process(self) -> None:
        if self._paused and not self._busy:
            self._paused = False
            self._framer.lines.restart(self.deadlineNow())
            self.transport.resumeProducing()
        framer = self._framer
        while not self._busy and not self.transport.disconnecting:
            if self._stop_if_idle():  # pipelined after the last command: not run
                break
            if self._mode != "line" and not framer.in_command:
                line = framer.lines.line()
                if line is None:
                    if self._refill():
                        continue
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
                if self._refill():
                    continue
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
        self._stop_if_idle()
        # Paused only while a command waits, never while closing.
        if self._busy and not self.transport.disconnecting:
            if not self._paused:
                self._paused = True
                self.transport.pauseProducing()
        elif not self.transport.disconnecting:
            self.armDeadline()


    # -- dispatch ------------------------------------------------------------------------

    def _execute(self, text: bytes, lits: list) -> None:
        self._executing = True  # nothing unsolicited is pushed in the middle of a command
        result = None

        def discard(outcome=None):
            for lit in lits:
                if not isinstance(lit, bytes):
                    lit.abort()  # a streamed literal the command did not deliver
            return outcome

        try:
            result = self._run(text, lits)
        finally:
            self._executing = False
            if result is None:
                discard()
            else:  # a command that goes on (an APPEND opening its folder): once it ends
                result.addBoth(discard)

    def _run(self, text: bytes, lits: list) -> defer.Deferred | None:
        try:
            tag, cmd, rest = wire.split_tag(text)
        except ParseError as e:
            tag = text.split(b" ", 1)[0]
            self._tagged(tag if wire.valid_tag(tag) else b"*", b"BAD", str(e).encode())
            return None
        name = cmd.decode()
        uid = False
        allowed = {"unauth": UNAUTH, "auth": AUTH, "select": SELECTED}.get(self.state, set())
        if name == "UID" and name in allowed:
            sub, _, rest = rest.partition(b" ")
            name = sub.upper().decode("ascii", "replace")
            uid = True
            if name not in UID_COMMANDS:
                self._tagged(tag, b"BAD", b"Unknown UID command")
                return None
        handler = getattr(self, f"imap_{name}", None)
        # The label comes from our own command table: a client cannot add names.
        label = "other" if handler is None else (f"UID {name}" if uid else name)
        metrics.imap_commands.labels(label).inc()
        if handler is None:
            self._tagged(tag, b"BAD", b"Unknown command")
            return None
        if name not in allowed:
            self._tagged(tag, b"BAD", f"{name} not allowed now".encode())
            return None
        if not rest.isascii() and self.utf8_names() and not names.valid_utf8(rest):
            # RFC 6855 3: 8-bit octets that are not UTF-8 "MUST" be BAD.
            self._tagged(tag, b"BAD", b"Invalid UTF-8 in the command")
            return None
        cur = Cursor(rest, list(lits))
        timer = metrics.Timer(metrics.imap_command_duration, label)
        try:
            result = handler(tag, cur, uid) if name in UID_COMMANDS else handler(tag, cur)
        except ParseError as e:
            self._tagged(tag, b"BAD", str(e).encode())
            timer.done()
            return None
        except imap4.MailboxException as e:
            self._tagged(tag, b"NO", _response_code(e) + str(e).encode())
            timer.done()
            return None
        except FolderGone:
            self._deselect()
            self._tagged(tag, b"NO", b"[NONEXISTENT] Mailbox was deleted or renamed")
            timer.done()
            return None
        except Exception:
            log.failure("IMAP {command} failed", command=name)
            self._tagged(tag, b"NO", b"[SERVERBUG] Internal error")
            timer.done()
            return None
        if not isinstance(result, defer.Deferred):
            timer.done()
        else:
            result.addBoth(timer.done)
            self._busy = True

            def failed(f):
                if self._lost:
                    return  # stopped, or failed, after the client left: nobody to tell
                if f.check(imap4.MailboxException):  # as when raised at once (above)
                    self._tagged(tag, b"NO", _response_code(f.value) + str(f.value).encode())
                    return None
                if f.check(FolderGone):  # deleted while a STORE went a batch at a time
                    self._deselect()
                    self._tagged(tag, b"NO", b"[NONEXISTENT] Mailbox was deleted or renamed")
                    return None
                log.failure("IMAP {command} failed", f, command=name)
                self._tagged(tag, b"NO", b"[SERVERBUG] Internal error")

            def resume(_):
                self._busy = False
                if not self._lost:
                    self._process()

            result.addErrback(failed).addBoth(resume)
            return result
        return None

    def _tagged(self, tag: bytes, status: bytes, text: bytes, allow_expunge: bool = True) -> None:
        """Send pending unsolicited updates, then the tagged completion."""
        if self.mbox is not None and status != b"BAD":
            additions = self._context_changes() if self.mbox.contexts else None
            for line in self.mbox.updates(allow_expunge):
                self.send(line)
            for line in additions() if additions is not None else ():
                self.send(line)
        if status != b"BAD":
            self._notify_flush(ending=True)  # NOTIFY: other mailboxes changed meanwhile
        self.send(tag + b" " + status + b" " + text)

    # -- session helpers the command groups share ---------------------------------------

    def _mailbox_name(self, cur) -> str:
        """The next argument as a stored mailbox name (L{names.from_wire}), INBOX canonical."""
        return canonical(names.from_wire(cur.astring(), self.utf8_names()))

    def _wire_name(self, name: str) -> bytes:
        """A stored mailbox name as this session reads it (L{names.to_wire})."""
        return names.to_wire(name, self.utf8_names())

    def _deselect(self) -> None:
        if self.mbox is not None:
            self.mbox.on_change = None
            self.mbox.close()
            self.mbox = None
        if self.state == "select":
            self.state = "auth"

    # -- selected -------------------------------------------------------------------------

    def _targets(self, seqset: SeqSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set (message numbers or UIDs) in this session."""
        uids = self.mbox.uids
        if seqset.saved:  # $: the saved UIDs that are still here (RFC 5182)
            saved = self.mbox.saved
            return [u for u in uids if u in saved] if saved else []
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


    # FETCH

    # STORE


    # COPY / MOVE

    # SEARCH





def _response_code(e: imap4.MailboxException) -> bytes:
    """
    The RFC 5530 code (also RFC 9051 7.1's) for a mailbox error no command
    answered itself: a missing or existing folder, else one that can never
    succeed (a bad name, DELETE INBOX): CANNOT.  Nothing if the text has one.
    """
    if str(e).startswith("["):
        return b""
    if isinstance(e, NoSuchFolder):
        return b"[NONEXISTENT] "
    if isinstance(e, FolderExists):
        return b"[ALREADYEXISTS] "
    return b"[CANNOT] "


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










class IMAPFactory(Factory):
    """Builds L{IMAPServer} for one listener."""

    def __init__(self, ctx, implicit_tls: bool = False):
        self.ctx = ctx
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr):
        p = IMAPServer(self.ctx, self.ctx.config.imap, self.implicit_tls)
        p.factory = self
        return p
