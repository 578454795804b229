"""C{/healthz}: the process is alive and its reactor turns (a load balancer's liveness probe)."""

from __future__ import annotations

import os
import time

from twisted.web.server import Request

from netsuite.http.site import OperationsSite, json_body, route

_STARTED = time.time()


@route("/healthz")
def healthz(request: Request, site: OperationsSite) -> bytes:
    return json_body(request, {"status": "ok", "pid": os.getpid(),
                               "uptime": round(time.time() - _STARTED, 3)})
