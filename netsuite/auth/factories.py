"""
C{ICheckerFactory} plugins, so netsuite's checkers work with C{twistd --auth}
and are chosen by name in the config like any other strcred checker.
"""

from __future__ import annotations

from twisted.cred import credentials, strcred
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(strcred.ICheckerFactory, IPlugin)
class PasswordFileCheckerFactory:
    authType = "passwd"
    authHelp = "netsuite password file of name:argon2id-hash lines (passwd:PATH)."
    argStringFormat = "PATH to the password file"
    credentialInterfaces = (credentials.IUsernamePassword,)

    def generateChecker(self, argstring: str = ""):
        from netsuite.auth.passwdfile import PasswordFileChecker

        return PasswordFileChecker(argstring or "netsuite-data/passwd")


@implementer(strcred.ICheckerFactory, IPlugin)
class PAMCheckerFactory:
    authType = "pam"
    authHelp = "System accounts through PAM (pam or pam:SERVICE, default 'login')."
    argStringFormat = "optional PAM service name"
    credentialInterfaces = (credentials.IUsernamePassword,)

    def generateChecker(self, argstring: str = ""):
        from netsuite.auth.pam import PAMChecker

        return PAMChecker(argstring or "login")


@implementer(strcred.ICheckerFactory, IPlugin)
class SQLCheckerFactory:
    authType = "sql"
    authHelp = ("Users in the PostgreSQL database (sql: the [database] dsn of the config, "
                "or sql:DSN); docs/scale-out.md.")
    argStringFormat = "optional libpq connection string"
    credentialInterfaces = (credentials.IUsernamePassword,)

    def generateChecker(self, argstring: str = ""):
        from netsuite.auth.sqlchecker import SQLChecker
        from netsuite.db.pool import for_dsn

        if not argstring:
            raise ValueError("needs a database: sql:DSN, or [database] dsn in the config")
        return SQLChecker(for_dsn(argstring))
