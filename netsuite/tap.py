"""
C{twistd netsuite}: options and the service maker.

Options follow C{twistd mail} / C{twistd ftp}: C{--config}, C{--data-dir},
C{--auth}, and one repeatable endpoint option per listener (C{--smtp},
C{--submission}, ...); C{--LISTENER off} or C{--disable LISTENER} switches one
off.  Command-line values override the file.
"""

from __future__ import annotations

import sys

from twisted.cred import strcred
from twisted.python import usage

from netsuite import logs, privileges, protocols, systemd
from netsuite.config import LISTENERS, ConfigError, load
from netsuite.service import build
from netsuite.workers import WorkerParent


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve SMTP, POP3, IMAP4, FTP and TELNET from one process over one "
        "twisted.cred portal. Listener options take Twisted endpoint strings "
        "(tcp:2525:interface=127.0.0.1) and may be repeated; 'off' disables one."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: embedded defaults)."],
        ["data-dir", "d", None, "Data directory (mailboxes, FTP roots, queue, certificate)."],
        ["hostname", None, None, "Host name used in greetings and trace headers."],
        ["workers", None, None, "Worker processes sharing the listeners (default 1)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = {}
        self["auth"] = []
        self["disable"] = []

    def opt_auth(self, description: str) -> None:
        """A credential checker, as twistd names them (passwd:PATH, pam, anonymous); repeatable."""
        self["auth"].append(description)

    def opt_help_auth(self) -> None:
        """List the available credential checkers."""
        for factory in strcred.findCheckerFactories():
            print(f"  --auth {factory.authType}: {factory.authHelp}")
        sys.exit(0)

    def opt_disable(self, name: str) -> None:
        """Switch a listener off (smtp, submission, pop3, ...); repeatable."""
        self["disable"].append(name)

    def postOptions(self) -> None:
        overrides = {}
        if self["data-dir"]:
            overrides["server.data_dir"] = self["data-dir"]
        if self["hostname"]:
            overrides["server.hostname"] = self["hostname"]
        if self["workers"]:
            try:
                overrides["server.workers"] = int(self["workers"])
            except ValueError:
                sys.exit(f"netsuite: --workers: not a number: {self['workers']!r}")
        if self["auth"]:
            overrides["server.auth"] = self["auth"]
        listen = {n: ([] if eps == ["off"] else eps) for n, eps in self["listen"].items()}
        for name in self["disable"]:
            if name not in LISTENERS:
                sys.exit(f"netsuite: --disable: unknown listener {name!r} "
                         f"(known: {', '.join(sorted(LISTENERS))})")
            listen[name] = []
        try:
            self["settings"] = load(self["config"], overrides, listen)
        except ConfigError as e:
            sys.exit(f"netsuite: {e}")
        # [log] format = "json": twistd's own --logger, set before twistd reads it
        # (netsuite.logs explains the order of things).
        logs.use_twistd_options(getattr(self, "parent", None), self["settings"].log.format)


def _listener_option(name: str):
    def opt(self: Options, endpoint: str) -> None:
        self["listen"].setdefault(name, []).append(endpoint)

    opt.__doc__ = f"Endpoint for the {name} listener (repeatable; 'off' disables it)."
    return opt


protocols.load_all()
for _name in LISTENERS:
    setattr(Options, "opt_" + _name, _listener_option(_name))


def makeService(options: Options):
    # First: read and unset NOTIFY_SOCKET, WATCHDOG_* and LISTEN_*, before
    # anything (a worker, a session's program) can inherit them.
    systemd.notifier()
    systemd.forget_listen_fds()
    settings = options["settings"]
    try:
        # Built as the user it will run as (what it creates is theirs); twistd
        # switches for good after privilegedStartService has bound the listeners.
        privileges.adopt_twistd_ids(options, settings)
        switch = privileges.plan(settings)
        with privileges.acting_as(settings, switch):
            server = build(settings)
        privileges.request(options, switch, settings)
        if settings.server.workers > 1:
            # Built above only to validate everything before a port opens.
            return WorkerParent(settings)
        return server
    except ConfigError as e:
        sys.exit(f"netsuite: {e}")
