"""Faithful local stand-ins for the vendors and the mail server (demo and tests)."""
