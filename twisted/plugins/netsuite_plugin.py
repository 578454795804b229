"""twistd and strcred plugins: C{twistd netsuite}, C{--auth passwd:...}, C{pam}, C{sql}."""

from twisted.application.service import ServiceMaker

from netsuite.auth.factories import (
    PAMCheckerFactory,
    PasswordFileCheckerFactory,
    SQLCheckerFactory,
)

netsuite = ServiceMaker(
    "netsuite",
    "netsuite.tap",
    "SMTP, POP3, IMAP4, FTP and TELNET over one twisted.cred portal.",
    "netsuite",
)

passwdChecker = PasswordFileCheckerFactory()
pamChecker = PAMCheckerFactory()
sqlChecker = SQLCheckerFactory()
