"""
SMTP: MX (port 25) and submission (587 STARTTLS, 465 implicit TLS).

C{wire} parses and renders (pure functions), C{server} is the ESMTP session
(a subclass of C{twisted.mail.smtp.ESMTP}), C{delivery} decides where each
recipient goes, C{service} plugs them into C{twistd netsuite}.
"""
