"""A queue notice (DSN) to a local sender over quota: said in the log, never retried for ever."""

from __future__ import annotations

from mail_fixtures import FAST, message, queue_ids, submit


def test_dsn_to_full_local_mailbox_is_logged_and_settled(make_daemon, remote):
    remote.handler.script["nobody@remote.test"] = ["550 5.1.1 <nobody@remote.test>: no such user"]
    d = make_daemon(config={
        "queue": {**FAST, "routes": {"remote.test": f"127.0.0.1:{remote.port}"}},
        "mail": {"quotas": {"alice": "2K"}}},
        listeners=["smtp", "submission", "smtps"], users={"alice": "alice-pw"})
    d.deliver_local("alice", b"Subject: filler\n\n" + b"x" * 3000 + b"\n")
    submit(d, ["nobody@remote.test"], message("bounceme"))
    assert d.wait_for(lambda: "not delivered: <alice@example.test> 552 5.2.2" in d.log(), 15), \
        d.log()[-3000:]
    d.wait_for(lambda: "removed: id=" in d.log(), 5)
    assert queue_ids(d) == []
    assert not any(b"multipart/report" in m for m in d.messages("alice"))
    assert "could not update" not in d.log()
