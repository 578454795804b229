"""
TELNET: a Network Virtual Terminal (RFC 854 and friends), a login through
the shared Portal, and a pseudo-terminal per session running the avatar's
program.  C{wire} holds the byte-level codec, C{server} the protocol,
C{session} the avatar and the pty bridge, C{service} the config section.
"""
