"""The adapter sidecar: normalise and enrich an app's logs into one schema.

``adapter run`` reads lines (stdin, a wrapped app's stdout and stderr, or
tailed files), turns each into a structured record (``adapter.pipeline``) and
writes the records out (stdout JSON lines or the Fluentd forward protocol).
"""

from __future__ import annotations

from sidecar_common.errors import SidecarError

__all__ = ["AdapterError", "OutputError"]


class AdapterError(SidecarError):
    """Root of the errors the adapter raises on purpose."""


class OutputError(AdapterError):
    """An output can no longer write (e.g. stdout was closed by the reader)."""
