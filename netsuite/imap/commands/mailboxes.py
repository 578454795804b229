"""
Mailbox operations: SELECT, EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB,
STATUS, CLOSE, UNSELECT.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.mail import imap4

from netsuite.imap import names, wire
from netsuite.imap.account import FolderExists, NoSuchFolder
from netsuite.imap.commands import SessionBase
from netsuite.imap.objectid import mailbox_id
from netsuite.imap.wire import ParseError
from netsuite.store.folder import FolderGone

STATUS_ITEMS: tuple[str, ...] = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
#: STATUS items of extensions: SIZE (RFC 8438).
STATUS_ITEMS += ("SIZE",)
#: DELETED and DELETED-STORAGE (RFC 9208 4.4, with QUOTA=RES-STORAGE).
STATUS_ITEMS += ("DELETED", "DELETED-STORAGE")
#: APPENDLIMIT (RFC 7889).
STATUS_ITEMS += ("APPENDLIMIT",)
#: MAILBOXID (RFC 8474).
STATUS_ITEMS += ("MAILBOXID",)
#: HIGHESTMODSEQ (RFC 7162, CONDSTORE).
STATUS_ITEMS += ("HIGHESTMODSEQ",)


class MailboxCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _select(self, tag, cur, rw: bool):
        name = self._mailbox_name(cur)
        params = wire.parse_select_params(cur)
        if params.qresync is not None and b"QRESYNC" not in self.enabled:
            raise ParseError("QRESYNC is not enabled (ENABLE QRESYNC first)")
        if self.mbox is not None:
            self._deselect()
            # RFC 7162 3.2.11: what follows is about the mailbox being selected.
            self.send(b"* OK [CLOSED] Previous mailbox closed")
        if params.condstore or params.qresync is not None:
            self._condstore_used()  # nothing selected: nothing told yet
        # A folder not in memory yet is read in a thread (a first open lists it all).
        mbox = self.account.select_deferred(name, rw)
        if isinstance(mbox, defer.Deferred):
            return mbox.addCallbacks(self._selected, self._select_failed,
                                     callbackArgs=(tag, rw, params), errbackArgs=(tag,))
        return self._selected(mbox, tag, rw, params)

    def _select_failed(self, failure, tag) -> None:
        failure.trap(FolderGone)
        if not self._lost:
            self._tagged(tag, b"NO", b"[NONEXISTENT] Mailbox was deleted or renamed")

    def _selected(self, mbox, tag, rw: bool, params) -> None:
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
        mbox.condstore = b"CONDSTORE" in self.enabled
        mbox.qresync = b"QRESYNC" in self.enabled
        rev2 = self._rev2()
        if rev2:
            mbox.set_no_recent()
        flags = " ".join(mbox.all_flags()).encode()
        self.send(b"* FLAGS (" + flags + b")")
        if rw:
            self.send(b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted")
        else:
            self.send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
        if rev2:
            self._rev2_selected(mbox)  # RFC 9051 6.3.2: LIST, and no RECENT or UNSEEN
        self.send(b"* %d EXISTS" % len(mbox.uids))
        if not rev2:
            self.send(b"* %d RECENT" % len(mbox.recent))
        unseen = 0 if rev2 else mbox.unseen_first()
        if unseen:
            self.send(b"* OK [UNSEEN %d] First unseen" % unseen)
        self.send(b"* OK [UIDVALIDITY %d] UIDs valid" % mbox.uidvalidity)
        self.send(b"* OK [UIDNEXT %d] Predicted next UID" % mbox.next_uid)
        self.send(b"* OK [MAILBOXID (%s)] Ok" % mailbox_id(mbox.folder).encode())  # RFC 8474
        if mbox.condstore:
            self._send_highestmodseq()
            q = params.qresync
            if q is not None and q.uidvalidity == mbox.uidvalidity and \
                    mbox.highest_modseq is not None:
                self._resync(mbox, q)
        mode = b"[READ-WRITE] SELECT" if rw else b"[READ-ONLY] EXAMINE"
        self.send(tag + b" OK " + mode + b" completed")

    def _resync(self, mbox, q: wire.QResync) -> None:
        """
        QRESYNC (RFC 7162 3.2.5): what changed since the client's MODSEQ, among the
        UIDs it knows: the expunged as VANISHED (EARLIER), the rest as FETCH.
        """
        gone = mbox.vanished_since(q.modseq, q.known_uids, q.seq_match)
        if gone:
            self.send(b"* VANISHED (EARLIER) " + gone)
        top = mbox.uids[-1] if mbox.uids else 0
        out = []
        for seq, uid in enumerate(mbox.uids, 1):
            msg = mbox.message(uid)
            if msg is None or mbox.modseq_of(msg) <= q.modseq:
                continue
            if q.known_uids is None or q.known_uids.contains(uid, top):
                out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                    seq, uid, mbox.flag_bytes(msg), mbox.modseq_of(msg)))
        if out:
            self.transport.writeSequence(out)

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
            if any(n.startswith(name + ".") for n in self.account.names()):
                # Only a \Noselect parent of others: RFC 9051 6.3.4's HASCHILDREN.
                self._tagged(tag, b"NO", b"[HASCHILDREN] Mailbox has inferior hierarchical "
                             b"names and is not selectable")
                return
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
        ref = names.pattern_from_wire(cur.astring(), self.utf8_names())
        cur.sp()
        pattern = names.pattern_from_wire(cur.list_mailbox(), self.utf8_names())
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
                      self._wire_name(name))
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
        if "HIGHESTMODSEQ" in items:
            self._condstore_used()
        items = self._rev2_status_items(items)
        try:
            values = self.account.status_deferred(name, items)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return None
        if isinstance(values, defer.Deferred):  # a folder read off the reactor first
            return values.addCallbacks(self._status_done, self._status_failed,
                                       callbackArgs=(tag, name, items), errbackArgs=(tag,))
        self._status_done(values, tag, name, items)
        return None

    def _status_done(self, values: dict, tag: bytes, name: str, items: list[str]) -> None:
        if self._lost:
            return
        body = " ".join(f"{k} {values[k]}" for k in items).encode()
        self.send(b"* STATUS " + self._wire_name(name) + b" (" + body + b")")
        self._tagged(tag, b"OK", b"STATUS completed")

    def _status_failed(self, failure, tag: bytes) -> None:
        failure.trap(imap4.MailboxException)
        if self._lost:
            return
        if failure.check(NoSuchFolder):
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
        else:
            self._tagged(tag, b"NO", str(failure.value).encode())

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
