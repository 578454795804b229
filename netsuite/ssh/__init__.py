"""SSH and SFTP on twisted.conch, over the same portal, terminal avatar and jailed root."""
