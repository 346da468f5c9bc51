"""Fixtures for this server kind (being written)."""
