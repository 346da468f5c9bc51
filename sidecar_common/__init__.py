"""Shared core of the sidecars: settings, logging, admin server, metrics, lifecycle."""
