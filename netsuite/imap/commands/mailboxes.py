"""
Mailbox operations: SELECT, EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB,
STATUS, CLOSE, UNSELECT.
"""

from __future__ import annotations

from twisted.internet import defer

from netsuite.imap import wire
from netsuite.imap.account import FolderExists, NoSuchFolder
from netsuite.imap.commands import SessionBase
from netsuite.imap.wire import ParseError
from netsuite.store.folder import FolderGone

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")


class MailboxCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

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
