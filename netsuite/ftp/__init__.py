"""FTP and FTPS: see docs/ftp.md."""
