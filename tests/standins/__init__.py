"""Test-only stand-ins: Dovecot, an OAuth2 authority, a fault proxy, a CA. Never installed."""
