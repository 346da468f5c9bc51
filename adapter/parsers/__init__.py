"""Line parsers, one small module per format; each maps a decoded line to a partial record.

``FORMATS`` maps the user-facing format name (``--format NAME``) to its parser.
``auto`` (adapter.detect) and ``custom`` (adapter.parsers.custom.CustomParser, which
needs the user's patterns) are handled by the pipeline.
"""

from __future__ import annotations

from adapter.parsers import (
    access,
    cri,
    docker,
    java,
    json_lines,
    klog,
    logfmt,
    plain,
    python,
    syslog,
)
from adapter.parsers.base import ParseContext, Parser, Partial
from adapter.parsers.custom import CustomParser

FORMATS: dict[str, Parser] = {
    "json": json_lines.parse,
    "logfmt": logfmt.parse,
    "access": access.parse,
    "syslog": syslog.parse,
    "python": python.parse,
    "java": java.parse,
    "klog": klog.parse,
    "cri": cri.parse,
    "docker": docker.parse,
    "plain": plain.parse,
}
# Names accepted by --format: the fixed formats plus the two the pipeline builds itself.
FORMAT_NAMES: tuple[str, ...] = ("auto", *FORMATS, "custom")

__all__ = ["FORMATS", "FORMAT_NAMES", "CustomParser", "ParseContext", "Parser", "Partial"]
