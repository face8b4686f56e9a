"""The IMAP side: connection, catch-up and IDLE, OAuth2 tokens."""
