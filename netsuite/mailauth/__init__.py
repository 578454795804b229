"""Mail authentication on the real internet: DKIM signing (and, later, SPF/DKIM/DMARC checks)."""
