"""
The IMAP commands, by group, as mixins of L{netsuite.imap.server.IMAPServer}.

The session class keeps the state (the connection, the login, the selected
mailbox), the reader and the dispatch (C{imap_NAME} methods); each module here
holds one group of commands and the helpers only it uses.  A command's grammar
lives in L{netsuite.imap.wire}, as functions of a L{netsuite.imap.wire.Cursor}
that can be tested on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet import defer

    from netsuite.imap.wire import Cursor, SeqSet

#: FETCH/STORE of a set in which another session expunged some messages: the rest are
#: answered and the command succeeds, Dovecot's words (its cmd-fetch.c).
EXPUNGE_ISSUED = b"[EXPUNGEISSUED] Some messages were already expunged."


class SessionBase:
    """
    What the command mixins use of the session, for the type checker: the
    attributes and methods are L{netsuite.imap.server.IMAPServer}'s (and
    Twisted's C{IMAP4Server}'s); nothing here exists at run time but the
    few methods below the declarations.
    """

    transport: Any
    state: str
    ctx: Any
    cfg: Any
    tls: bool
    peer: str
    portal: Any
    account: Any
    mbox: Any
    enabled: set[bytes]
    POSTAUTH_TIMEOUT: Any
    _framer: Any
    _mode: str
    _busy: bool
    _executing: bool
    _lost: bool
    _idle_tag: bytes | None
    _sasl_tag: bytes | None
    _onLogout: Any
    _inflater: Any

    if TYPE_CHECKING:
        def send(self, line: bytes) -> None: ...
        def _tagged(self, tag: bytes, status: bytes, text: bytes,
                    allow_expunge: bool = True) -> None: ...
        def _mailbox_name(self, cur: Cursor) -> str: ...
        def _wire_name(self, name: str) -> bytes: ...
        def _deselect(self) -> None: ...
        def _targets(self, seqset: SeqSet, uid: bool) -> list[int]: ...
        def _cooperate(self, work: Any) -> defer.Deferred: ...
        def _process(self) -> None: ...
        def _mailbox_changed(self) -> None: ...
        def _list(self, tag: bytes, cur: Cursor, subscribed: bool, verb: bytes) -> None: ...
        def _refuse_over_quota(self, tag: bytes, extra: int) -> bool: ...
        def _catenate_url(self, text: str) -> bytes | None: ...
        def _notify_selected_changed(self) -> bool: ...
        def _notify_flush(self, ending: bool = False) -> None: ...
        def _notify_stop(self) -> None: ...
        def _condstore_used(self) -> None: ...
        def _rev2(self) -> bool: ...
        def _enable_imap4rev2(self) -> None: ...
        def _rev2_selected(self, mbox: Any) -> None: ...
        def _rev2_status_items(self, items: list[str]) -> list[str]: ...
        def _rev2_check_keys(self, keys: list) -> None: ...
        def _send_highestmodseq(self) -> None: ...
        def capability_list(self) -> list[bytes]: ...
        def plaintext_allowed(self) -> bool: ...
        def setTimeout(self, period: float | None) -> Any: ...
        def resetTimeout(self) -> None: ...

    def utf8_names(self) -> bool:
        """
        Mailbox names (and quoted strings) are UTF-8 in this session, not
        modified UTF-7: after ENABLE UTF8=ACCEPT (RFC 6855 3) or ENABLE
        IMAP4rev2 (RFC 9051 5.1).
        """
        return bool(self.enabled & {b"UTF8=ACCEPT", b"IMAP4REV2"})
