"""netsuite: SMTP, POP3, IMAP4, FTP and TELNET over one twisted.cred portal."""

__version__ = "0.1.0"
