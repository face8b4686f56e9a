"""Encoura: the File Export API client and its poller."""
