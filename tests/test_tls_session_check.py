"""
How FTPS asks whether a data connection resumed a TLS session: pyOpenSSL has
no public call for it, so netsuite uses a private binding, prefers a public one
if pyOpenSSL grows it, and refuses to start (one clear line) when neither works.
The live path is covered by the real-daemon FTPS tests.
"""

from __future__ import annotations

import sys
import types

import pytest
from OpenSSL import SSL

from netsuite.config import ConfigError, load
from netsuite.ftp import data


class Transport:
    def __init__(self, conn):
        self.conn = conn

    def getHandle(self):
        return self.conn


def fresh_connection() -> SSL.Connection:
    return SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)


def test_a_public_session_reused_is_preferred(monkeypatch):
    calls = []

    def session_reused(self):
        calls.append(self)
        return True

    monkeypatch.setattr(SSL.Connection, "session_reused", session_reused, raising=False)
    conn = fresh_connection()
    assert data.session_reused(Transport(conn)) is True
    assert calls == [conn]


def test_the_private_binding_answers_on_this_pyopenssl():
    if data._private_session_reused() is None:
        pytest.skip("this pyOpenSSL has no private SSL_session_reused: start-up refuses "
                    "require_tls_session_reuse (tested below)")
    assert data.session_reused(Transport(fresh_connection())) is False  # no handshake yet


def context(tmp_path, text: str = ""):
    path = tmp_path / "c.toml"
    path.write_text(f"[server]\ndata_dir = '{tmp_path}'\n{text}")
    return types.SimpleNamespace(config=load(path), reactor=None)


def test_without_private_binding_start_up_names_the_key(monkeypatch, tmp_path):
    from netsuite.ftp import service

    ctx = context(tmp_path)
    conn = fresh_connection()
    # OpenSSL._util gone, as an upgrade may do (what imported it already keeps it).
    monkeypatch.setitem(sys.modules, "OpenSSL._util", None)
    assert data._private_session_reused() is None
    with pytest.raises(data.SessionReuseUnknown):
        data.check_session_reuse_available()
    with pytest.raises(data.SessionReuseUnknown):
        data.session_reused(Transport(conn))
    with pytest.raises(ConfigError) as e:
        service.build(ctx, "ftp")
    assert e.value.key == "ftp.require_tls_session_reuse"
    assert "cannot tell whether a TLS session was resumed" in str(e.value)
    assert "set it to false" in str(e.value)


def test_without_private_binding_reuse_can_be_switched_off(monkeypatch, tmp_path):
    from netsuite.ftp import service

    ctx = context(tmp_path, "[ftp]\nrequire_tls_session_reuse = false\n")
    monkeypatch.setitem(sys.modules, "OpenSSL._util", None)
    factory = service.build(ctx, "ftp")
    assert factory.require_reuse is False
