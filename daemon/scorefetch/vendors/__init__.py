"""Vendor API clients: one module per vendor."""
