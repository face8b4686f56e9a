"""scorefetch: collects vendor score files the moment they are published."""

__version__ = "0.1.0"
