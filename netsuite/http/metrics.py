"""
C{/metrics}: the process's Prometheus metrics (L{netsuite.metrics.REGISTRY})
in the text exposition format, rendered by prometheus_client.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.server import Request

from netsuite import metrics
from netsuite.http.site import OperationsSite, route


@route("/metrics")
def render_metrics(request: Request, site: OperationsSite) -> bytes:
    # On the reactor thread: every collector reads in-memory state (the queue
    # collector too), so a scrape is cheap and sees one consistent moment.
    body = generate_latest(metrics.REGISTRY)
    request.setResponseCode(200)
    request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    return body
