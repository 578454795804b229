"""
FETCH: UID/FLAGS-only answers from the index in big chunks, the rest a batch per reactor
turn, parsed fields from the message cache.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator

from netsuite.imap import objectid, wire
from netsuite.imap.binary import UnknownCTE, binary_section
from netsuite.imap.commands import EXPUNGE_ISSUED, SessionBase
from netsuite.imap.message import Part, bodystructure, envelope
from netsuite.imap.wire import ParseError
from netsuite.store.folder import Message

#: Messages rendered per reactor turn by FETCH (and scanned per turn by SEARCH).
FETCH_BATCH = 256

#: Messages per write (and per reactor turn) of a FETCH of UID/FLAGS only.
FLAGS_CHUNK = 4096

#: FETCH items answered from the index alone: no message body is read for them.
INDEX_ONLY = frozenset({"UID", "FLAGS", "MODSEQ", "INTERNALDATE", "RFC822.SIZE", "EMAILID",
                        "THREADID", "SAVEDATE"})

#: FLAGS renderings of keyword-less messages by their Maildir info letters (bounded).
_FLAG_BYTES: dict[str, bytes] = {}
#: The same for messages that are \Recent in the session.
_RECENT_FLAG_BYTES: dict[str, bytes] = {}


class FetchCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_FETCH(self, tag, cur, uid=False):
        seqset = cur.seqset()
        cur.sp()
        atts = wire.parse_fetch_atts(cur)
        mods = wire.parse_fetch_modifiers(cur)
        if mods.vanished and not (uid and b"QRESYNC" in self.enabled):
            raise ParseError("VANISHED needs UID FETCH and ENABLE QRESYNC")
        if uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, wire.FetchAtt("UID"))
        since = mods.changedsince
        if since is not None and not any(a.name == "MODSEQ" for a in atts):
            atts.append(wire.FetchAtt("MODSEQ"))  # RFC 7162 3.1.4.1
        if any(a.name == "MODSEQ" for a in atts):
            self._condstore_used()
        targets = self._targets(seqset, uid)
        mbox = self.mbox
        if since is not None:
            if mods.vanished:  # before any FETCH response (RFC 7162 3.2.6)
                gone = mbox.vanished_since(since, seqset)
                if gone:
                    self.send(b"* VANISHED (EARLIER) " + gone)
            targets = [u for u in targets
                       if (m := mbox.message(u)) is None or mbox.modseq_of(m) > since]
        marks_seen = mbox.writeable and any(
            a.section is not None and not a.section.peek for a in atts)
        add_flags = set()
        if marks_seen:
            unseen = [m for m in mbox.messages(targets) if not m.has("\\Seen")]
            if unseen:
                mbox.set_flags(unseen, ["\\Seen"], 1)
                if not any(a.name == "FLAGS" for a in atts):
                    add_flags = {m.uid for m in unseen}
        for line in mbox.flags_update():  # keywords others added: FLAGS before the FETCHes
            self.send(line)
        missing = []
        unknown_cte: list[str] = []

        def done(_):
            if unknown_cte:  # RFC 3516 4.1: the encoding cannot be undone
                self._tagged(tag, b"NO", b"[UNKNOWN-CTE] Unknown Content-Transfer-Encoding " +
                             unknown_cte[0].encode("ascii", "replace")[:64],
                             allow_expunge=uid)
            elif missing:  # as Dovecot: the remaining messages were answered (RFC 2180 4.1.2)
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
                except UnknownCTE as e:
                    unknown_cte.append(str(e))
                if len(out) >= FETCH_BATCH:
                    mbox.flush_cache()
                    self.transport.writeSequence(out)
                    out = []
                    yield None
            mbox.flush_cache()
            if out:
                self.transport.writeSequence(out)

        def answer(_=None):
            if self._lost:
                return None
            if len(targets) <= FETCH_BATCH:
                for _ in render():
                    pass
                done(None)
                return None
            return self._cooperate(render()).addCallback(done)

        # Bodies not at hand (PostgreSQL: not in this host's cache) are fetched first,
        # off the reactor, so that no read below waits.
        # (A generator: a store that is always ready, Maildir, never walks it.)
        ready = (mbox.bodies_ready(m for u in targets if (m := mbox.message(u)) is not None)
                 if any(a.name not in INDEX_ONLY for a in atts) else None)
        if ready is None:
            return answer()

        def unavailable(failure):
            failure.trap(OSError)
            if not self._lost:
                self._tagged(tag, b"NO", b"[UNAVAILABLE] The mail store is unavailable, "
                                         b"try again later", allow_expunge=uid)

        return ready.addCallbacks(answer, unavailable)

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
                    chunk = msgs[start:start + FLAGS_CHUNK]
                    data = _flags_lines(order, range(start + 1, start + 1 + len(chunk)),
                                        chunk, render, mbox.recent)
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
            pairs = found[start:start + FLAGS_CHUNK]
            yield _flags_lines(order, [seq for seq, _m in pairs], [m for _s, m in pairs], render,
                               mbox.recent)

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
            elif name == "MODSEQ":
                items.append(b"MODSEQ (%d)" % mbox.modseq_of(msg))
            elif name == "FLAGS":
                items.append(b"FLAGS " + mbox.flag_bytes(msg))
            elif name == "INTERNALDATE":
                items.append(b"INTERNALDATE " + wire.format_datetime(mbox.date_of(msg)))
            elif name == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % mbox.size_of(msg))
            elif name in ("EMAILID", "THREADID", "SAVEDATE"):
                items.append(_object_item(name, mbox.folder, msg))
            elif name == "SECTION" and not att.section.part and att.section.kind == "" and \
                    part is None:
                # BODY[] / RFC822: the whole message, no MIME parsing needed.
                sec = att.section
                if raw is None:
                    raw = mbox.read(msg)
                data = raw if sec.partial is None else \
                    raw[sec.partial[0]:sec.partial[0] + sec.partial[1]]
                items.append(wire.section_label(sec) + b" " + wire.literal(data))
            elif name in ("BINARY", "BINARY.SIZE"):
                if part is None:
                    part = Part(raw if raw is not None else mbox.read(msg))
                sec = att.section
                content = binary_section(part, sec.part) or b""  # raises UnknownCTE
                if name == "BINARY.SIZE":
                    items.append(wire.binary_label(sec, size=True) + b" %d" % len(content))
                else:
                    if sec.partial is not None:
                        start, length = sec.partial
                        content = content[start:start + length]
                    items.append(wire.binary_label(sec) + b" " + wire.literal8(content))
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
            if mbox.condstore:  # \Seen set: told with UID and MODSEQ (RFC 7162 3.1)
                if not any(a.name == "UID" for a in atts):
                    items.append(b"UID %d" % msg.uid)
                if not any(a.name == "MODSEQ" for a in atts):
                    items.append(b"MODSEQ (%d)" % mbox.modseq_of(msg))
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"


def _flags_lines(order: tuple[str, ...], seqs: Iterable[int], msgs: list[Message],
                 render: Callable[[Message], bytes], recent: set[int]) -> bytes:
    """The FETCH responses of messages C{msgs} numbered C{seqs} for UID and/or FLAGS, joined."""
    if order == ("UID",):
        return b"".join(map(b"* %d FETCH (UID %d)\r\n".__mod__,
                            zip(seqs, map(_UID, msgs), strict=True)))
    flags = _render_flags(msgs, render, recent)
    if order == ("UID", "FLAGS"):
        return b"".join(map(b"* %d FETCH (UID %d FLAGS %s)\r\n".__mod__,
                            zip(seqs, map(_UID, msgs), flags, strict=True)))
    if order == ("FLAGS",):
        return b"".join(map(b"* %d FETCH (FLAGS %s)\r\n".__mod__, zip(seqs, flags, strict=True)))
    return b"".join([b"* %d FETCH (" % seq + b" ".join(
        b"UID %d" % m.uid if name == "UID" else b"FLAGS " + f
        for name in order) + b")\r\n" for seq, m, f in zip(seqs, msgs, flags, strict=True)])


_UID = operator.attrgetter("uid")
_NAME = operator.attrgetter("name")
_KEYWORDS = operator.attrgetter("keywords")
_INFO = operator.itemgetter(2)


def _render_flags(msgs: list[Message], render: Callable[[Message], bytes],
                  recent: set[int]) -> list[bytes]:
    """
    C{list(map(render, msgs))}, and for a run of keyword-less messages all
    \\Recent or none (every message on a first open) with no Python code per
    message: their names' info letters by C{map}, the renderings from
    L{_FLAG_BYTES} or L{_RECENT_FLAG_BYTES} by C{map(dict.get)}.
    """
    if any(map(_KEYWORDS, msgs)):
        return list(map(render, msgs))
    uids = list(map(_UID, msgs))
    if recent.issuperset(uids):
        table = _RECENT_FLAG_BYTES
    elif recent.isdisjoint(uids):
        table = _FLAG_BYTES
    else:
        return list(map(render, msgs))
    found: list[bytes | None] = list(map(table.get, map(_INFO, map(
        str.partition, map(_NAME, msgs), itertools.repeat(":2,")))))
    if None in found:  # letters not rendered yet (a few per folder)
        return [f if f is not None else render(m) for f, m in zip(found, msgs, strict=True)]
    return found  # type: ignore[return-value]  # no None in it


def _object_item(name: str, folder, msg) -> bytes:
    """EMAILID, THREADID (RFC 8474) or SAVEDATE (RFC 8514): see L{objectid}."""
    if name == "EMAILID":
        return b"EMAILID (" + objectid.email_id(folder, msg).encode() + b")"
    if name == "THREADID":
        return b"THREADID NIL"
    saved = objectid.save_date(msg)
    return b"SAVEDATE " + (b"NIL" if saved is None else wire.format_datetime(saved))


def _cache_field(att) -> str | None:
    """
    The message-cache field (netsuite.store.cache) of a FETCH item computed from the
    message's bytes, or None if it is not cached: ENVELOPE, BODY, BODYSTRUCTURE and the
    top-level header sections that clients ask for in every message list.  The names
    carry a version: a change to how one renders must change its name.
    """
    name = att.name
    if name == "ENVELOPE":
        return "envelope2"  # 2: source routes kept
    if name == "BODYSTRUCTURE":
        return "bodystructure2"  # 2: its envelopes too
    if name == "BODY":
        return "body2"
    sec = att.section
    if sec is not None and not sec.part and sec.kind in ("HEADER", "HEADER.FIELDS",
                                                         "HEADER.FIELDS.NOT"):
        return ("h1:" + sec.kind + " " +
                " ".join(f.decode("ascii", "replace") for f in sec.fields))
    return None
