"""The operations listener: health checks, and what administrators and mail clients ask."""
