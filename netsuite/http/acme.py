"""
C{/.well-known/acme-challenge/<token>}: the ACME HTTP-01 answers (RFC 8555 8.3).

The ACME client (L{netsuite.tls_acme}) writes each pending token's key
authorization to a file under the data directory before it tells the CA to
check; this handler serves it.  A file, not a dict in memory, so that with
C{--workers N} the worker the CA's request reaches answers as well.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.web.server import Request

from netsuite.http.site import OperationsSite, route, text_body

PREFIX = "/.well-known/acme-challenge/"
#: A token is base64url (RFC 8555 8.1): nothing of it can name another file.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def challenge_dir(data_dir: Path) -> Path:
    """Where pending HTTP-01 key authorizations live, one file per token."""
    return data_dir / "tls" / "acme" / "challenges"


@route(PREFIX, prefix=True)
def acme_challenge(request: Request, site: OperationsSite) -> bytes:
    token = request.path[len(PREFIX):].decode("ascii", "replace")
    if not _TOKEN.match(token):
        return text_body(request, "not found\n", code=404)
    try:
        answer = (challenge_dir(site.ctx.config.data_dir) / token).read_bytes()
    except OSError:
        return text_body(request, "not found\n", code=404)
    return text_body(request, answer, content_type=b"application/octet-stream")
