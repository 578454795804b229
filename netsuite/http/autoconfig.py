"""
Mail client autoconfiguration, generated from what is listening now:
Thunderbird's autoconfig (config-v1.1.xml), Outlook's POX autodiscover, and
an Apple configuration profile (.mobileconfig).

Every document offers implicit TLS first (RFC 8314: smtps, imaps, pop3s)
and STARTTLS second, never a plain-text port; the host name clients are
told is C{[http] mail_hostname}, or C{[server] hostname}.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from twisted.web.server import Request

from netsuite.http.site import OperationsSite, json_body, route, text_body
from netsuite.service import listening_ports

#: (listener, protocol, socket type) in the order clients should prefer them.
OFFERED = [
    ("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"),
    ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"),
    ("smtps", "smtp", "SSL"), ("submission", "smtp", "STARTTLS"),
]

OUTLOOK_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_ACCOUNT = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                   "responseschema/2006a")


@dataclass
class Server:
    protocol: str  # imap, pop3, smtp
    port: int
    socket: str    # SSL or STARTTLS


def servers(site: OperationsSite) -> list[Server]:
    """What clients may use, best first: the TCP ports the mail listeners are bound to now."""
    bound = listening_ports(site.ctx.top) if site.ctx.top is not None else {}
    found = []
    for listener, protocol, socket in OFFERED:
        for port in bound.get(listener, []):
            if isinstance(port, int):
                found.append(Server(protocol, port, socket))
                break
    return found


def mail_hostname(site: OperationsSite) -> str:
    return site.ctx.config.http.mail_hostname or site.ctx.config.server.hostname


def _arg(request: Request, name: bytes) -> str:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name) or [b""]
    return values[0].decode("utf-8", "replace").strip()


def _host(request: Request) -> str:
    """The Host header's name, without port, lower case."""
    raw = request.getHeader(b"host") or b""
    return raw.decode("ascii", "replace").rsplit(":", 1)[0].lower().rstrip(".")


def _domain_of(request: Request, site: OperationsSite, address: str) -> str | None:
    """The local domain asked about: the address's, or the Host's (autoconfig.DOMAIN)."""
    domains = site.ctx.config.mail.local_domains
    if address:
        domain = address.rpartition("@")[2].lower().rstrip(".")
    else:
        domain = _host(request).removeprefix("autoconfig.").removeprefix("autodiscover.")
        if domain not in domains:
            domain = domains[0]
    return domain if domain in domains else None


def login_name(site: OperationsSite, address: str) -> str:
    """The user an address logs in as: the one user it resolves to, else its local part."""
    local, _, domain = address.rpartition("@")
    resolve = getattr(site.ctx.realm, "resolve_local", None)
    if resolve is not None and local:
        try:
            users = resolve(local, domain.lower())
        except Exception:
            users = []
        if len(users) == 1:
            return users[0]
    return local or address


def _not_local(request: Request) -> bytes:
    return json_body(request, {"error": "not a local domain"}, 404)


def _xml(request: Request, root: ET.Element, content_type: bytes = b"application/xml") -> bytes:
    request.setHeader(b"content-type", content_type + b"; charset=utf-8")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@route("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml")
def thunderbird(request: Request, site: OperationsSite) -> bytes:
    """Thunderbird's format (also read by K-9/Thunderbird for Android, Evolution, KMail)."""
    address = _arg(request, b"emailaddress")
    domain = _domain_of(request, site, address)
    if domain is None:
        return _not_local(request)
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    username = login_name(site, address) if address else "%EMAILLOCALPART%"
    host = mail_hostname(site)
    for server in servers(site):
        tag = "outgoingServer" if server.protocol == "smtp" else "incomingServer"
        element = ET.SubElement(provider, tag, type=server.protocol)
        ET.SubElement(element, "hostname").text = host
        ET.SubElement(element, "port").text = str(server.port)
        ET.SubElement(element, "socketType").text = server.socket
        ET.SubElement(element, "authentication").text = "password-cleartext"
        ET.SubElement(element, "username").text = username
    return _xml(request, root)


def _request_address(body: bytes) -> str:
    """The EMailAddress of an Outlook POX request (expat: no external entities are fetched)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    found = root.find(f"{{{OUTLOOK_REQUEST}}}Request/{{{OUTLOOK_REQUEST}}}EMailAddress")
    return (found.text or "").strip() if found is not None else ""


@route("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
       methods=("GET", "HEAD", "POST"))
def outlook(request: Request, site: OperationsSite) -> bytes:
    """Outlook's POX autodiscover (MS-OXDSCLI), the IMAP/POP3/SMTP 'settings' answer."""
    address = ""
    if request.method == b"POST" and request.content is not None:
        address = _request_address(request.content.read())
    address = address or _arg(request, b"emailaddress")
    if "@" not in address:
        return json_body(request, {"error": "EMailAddress expected"}, 400)
    if _domain_of(request, site, address) is None:
        return _not_local(request)
    ET.register_namespace("", OUTLOOK_RESPONSE)
    root = ET.Element(f"{{{OUTLOOK_RESPONSE}}}Autodiscover")
    response = ET.SubElement(root, f"{{{OUTLOOK_ACCOUNT}}}Response")

    def child(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        element = ET.SubElement(parent, f"{{{OUTLOOK_ACCOUNT}}}{tag}")
        element.text = text
        return element

    account = child(response, "Account")
    child(account, "AccountType", "email")
    child(account, "Action", "settings")
    login, host = login_name(site, address), mail_hostname(site)
    for server in servers(site):
        protocol = child(account, "Protocol")
        child(protocol, "Type", server.protocol.upper())
        child(protocol, "Server", host)
        child(protocol, "Port", str(server.port))
        child(protocol, "LoginName", login)
        child(protocol, "DomainRequired", "off")
        child(protocol, "SPA", "off")
        child(protocol, "SSL", "on")
        child(protocol, "Encryption", "SSL" if server.socket == "SSL" else "TLS")
        child(protocol, "AuthRequired", "on")
    return _xml(request, root, b"text/xml")


@route("/mail/netsuite.mobileconfig")
def apple(request: Request, site: OperationsSite) -> bytes:
    """An (unsigned) Apple configuration profile for one address: iOS and macOS Mail."""
    address = _arg(request, b"emailaddress")
    if "@" not in address:
        return json_body(request, {"error": "emailaddress expected"}, 400)
    domain = _domain_of(request, site, address)
    if domain is None:
        return _not_local(request)
    offered = servers(site)
    incoming = next((s for s in offered if s.protocol == "imap"), None) or \
        next((s for s in offered if s.protocol == "pop3"), None)
    outgoing = next((s for s in offered if s.protocol == "smtp"), None)
    if incoming is None or outgoing is None:
        return json_body(request, {"error": "no mail listener to configure"}, 404)
    login, host = login_name(site, address), mail_hostname(site)
    ident = ".".join(reversed(domain.split("."))) + ".netsuite.mail"
    account: dict[str, Any] = {
        "EmailAccountDescription": address,
        "EmailAccountName": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": host,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": login,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": login,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDescription": f"Mail account {address}",
        "PayloadDisplayName": address,
        "PayloadIdentifier": f"{ident}.account.{login}",
        "PayloadType": "com.apple.mail.managed",
        # Stable per address: downloading the profile again replaces, not duplicates.
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"netsuite:mail:{address}")),
        "PayloadVersion": 1,
    }
    profile = {
        "PayloadContent": [account],
        "PayloadDisplayName": f"{domain} mail",
        "PayloadIdentifier": f"{ident}.{login}",
        "PayloadType": "Configuration",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"netsuite:profile:{address}")),
        "PayloadVersion": 1,
    }
    request.setHeader(b"content-disposition",
                      f'attachment; filename="{domain}.mobileconfig"'.encode("ascii", "replace"))
    return text_body(request, plistlib.dumps(profile), b"application/x-apple-aspen-config")


@route("/.well-known/mta-sts.txt")
def mta_sts(request: Request, site: OperationsSite) -> bytes:
    """
    The MTA-STS policy (RFC 8461) for the local domains: senders that fetch it
    from https://mta-sts.DOMAIN/ deliver only over TLS to the listed MX names.
    """
    http = site.ctx.config.http
    host = _host(request)
    if host.startswith("mta-sts.") and \
            host.removeprefix("mta-sts.") not in site.ctx.config.mail.local_domains:
        return _not_local(request)
    lines = ["version: STSv1", f"mode: {http.mta_sts_mode}"]
    lines += [f"mx: {mx}" for mx in (http.mta_sts_mx or [site.ctx.config.server.hostname])]
    lines.append(f"max_age: {http.mta_sts_max_age}")
    return text_body(request, "".join(line + "\r\n" for line in lines))
