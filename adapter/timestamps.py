"""Timestamps: read the common layouts fast, write RFC 3339 UTC.

Times are integer nanoseconds since the epoch everywhere in the pipeline: exact
for every layout we read (klog's microseconds, CRI's nanoseconds) and what the
OpenTelemetry model wants, with no float rounding to reason about.

Speed matters more than generality here (a timestamp per line at 100,000 lines
per second), so a layout is picked by looking at a few fixed character
positions and only then is one anchored regex run; the calendar arithmetic is
cached by the whole-seconds part, which repeats for every line written within
the same second.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sidecar_common.errors import ConfigError

NS = 1_000_000_000
MONTHS = {
    "Jan": 1,
    "Feb": 2,
    "Mar": 3,
    "Apr": 4,
    "May": 5,
    "Jun": 6,
    "Jul": 7,
    "Aug": 8,
    "Sep": 9,
    "Oct": 10,
    "Nov": 11,
    "Dec": 12,
}
# Largest time we accept (9999-12-31T23:59:59Z): anything later is not a timestamp but a number.
MAX_NS = 253402300799 * NS
# Bounds the caches: a long-running adapter sees a new second every second.
_CACHE_MAX = 4096
# How far ahead of the wall clock a year-less timestamp may be before it is taken as last year's
# (clock skew between the writer and us), and inside which the next year is chosen at New Year.
_YEAR_SLACK = 2 * 86400

_FRACTION = re.compile(r"[.,](\d{1,9})")
_ZONE = re.compile(r"(Z|z|[+-]\d\d(?::?\d\d)?|\ ?(?:UTC|GMT)(?![A-Za-z]))")
_ISO_HEAD = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)")
_SLASHED = re.compile(r"(\d{4}|\d\d)/(\d\d)/(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?")
_COMPACT = re.compile(r"(\d\d)(\d\d)(\d\d) {1,2}(\d\d):?(\d\d):?(\d\d)(?:[.,](\d{1,9}))?(?![\d:])")
_SYSLOG = re.compile(
    r"([A-Z][a-z]{2}) ([ \d]?\d) (\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(?: (\d{4})(?=\s))?"
)
_TOMCAT = re.compile(r"(\d\d)-([A-Z][a-z]{2})-(\d{4})[ :](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?")
_TIME_ONLY = re.compile(r"(\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(?![\d:])")
_EPOCH = re.compile(r"(\d{10}|\d{13})(?:\.(\d{1,9}))?(?![\d.:/-])")


def load_zone(name: str, *, setting: str = "timezone") -> tzinfo:
    """The zone naive timestamps are read in; a bad name is the user's error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(
            setting, name, "an IANA time zone name such as UTC or Europe/Berlin"
        ) from exc


def _fraction_ns(digits: str | None) -> int:
    if not digits:
        return 0
    return int(digits.ljust(9, "0"))


def _offset_seconds(zone: str | None) -> int | None:
    """Seconds east of UTC for an explicit zone, None for a naive timestamp."""
    if not zone:
        return None
    zone = zone.strip()
    if zone in ("Z", "z", "UTC", "GMT"):
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) >= 4 else 0
    return sign * (hours * 3600 + minutes * 60)


class TimestampParser:
    """Parses timestamps for one pipeline: owns the zone for naive times and the caches."""

    def __init__(self, zone: str | tzinfo = "UTC") -> None:
        self.zone: tzinfo = load_zone(zone) if isinstance(zone, str) else zone
        self._utc = getattr(self.zone, "key", None) in ("UTC", "Etc/UTC", "Etc/UCT", "UCT")
        self._local: dict[tuple[int, int, int, int, int, int], int] = {}
        self._gm: dict[tuple[int, int, int, int, int, int], int] = {}
        self._year: tuple[float, float, int] = (0.0, 0.0, 0)  # [start, end) of wall's year
        self._apache: dict[str, int] = {}
        self._heads: dict[str, tuple[int, int]] = {}  # ISO head -> (seconds if UTC, if in the zone)
        self._canonical: dict[str, bool] = {}  # ISO head -> already RFC 3339 output (see below)

    # -- calendar ---------------------------------------------------------------------------
    def civil(
        self, y: int, mo: int, d: int, h: int, mi: int, s: int, offset: int | None
    ) -> int | None:
        """Epoch seconds of a civil time; ``offset`` None means the configured zone.

        None when the fields are no real date (31 February), so the caller treats the text
        as no timestamp rather than raising.
        """
        key = (y, mo, d, h, mi, s)
        utc = offset is not None or self._utc
        if utc:
            # Cached: year-less layouts compute two candidate years per line.
            known = self._gm.get(key)
            if known is not None:
                return known - (offset or 0)
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60 and y >= 1):
            return None
        if d > 28 and d > calendar.monthrange(y, mo)[1]:
            return None
        if s == 60:  # a leap second: fold into the next second's start, as POSIX does
            s = 59
        if utc:
            known = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
            if len(self._gm) >= _CACHE_MAX:
                self._gm.clear()
            self._gm[key] = known
            return known - (offset or 0)
        cached = self._local.get(key)
        if cached is None:
            if len(self._local) >= _CACHE_MAX:
                self._local.clear()
            cached = int(datetime(y, mo, d, h, mi, s, tzinfo=self.zone).timestamp())
            self._local[key] = cached
        return cached

    def _ns(
        self, y: int, mo: int, d: int, h: int, mi: int, s: int, frac: str | None, offset: int | None
    ) -> int | None:
        secs = self.civil(y, mo, d, h, mi, s, offset)
        if secs is None:
            return None
        ns = secs * NS + _fraction_ns(frac)
        if ns < 0 or ns > MAX_NS:
            return None
        return ns

    def infer_year(
        self, mo: int, d: int, h: int, mi: int, s: int, frac: str | None, wall: float
    ) -> int | None:
        """A year-less time (syslog, klog) placed in the year that makes sense at ``wall``.

        The wall clock's year, unless that puts the time more than two days in the future
        (a December line read in January: last year), or the next year puts it within two
        days of now (a 1 January line read on 31 December by a slightly slow clock).
        """
        start, end, year = self._year
        if not start <= wall < end:
            year = time.gmtime(wall).tm_year
            start = calendar.timegm((year, 1, 1, 0, 0, 0, 0, 0, 0))
            end = start + (366 if calendar.isleap(year) else 365) * 86400
            self._year = (start, end, year)
        wall_ns = int(wall * NS)
        slack = _YEAR_SLACK * NS
        nxt = self._ns(year + 1, mo, d, h, mi, s, frac, None)
        if nxt is not None and nxt - wall_ns <= slack:
            return nxt
        cur = self._ns(year, mo, d, h, mi, s, frac, None)
        if cur is not None and cur - wall_ns <= slack:
            return cur
        for back in (1, 2, 3, 4):  # 29 February needs a leap year
            prev = self._ns(year - back, mo, d, h, mi, s, frac, None)
            if prev is not None:
                return prev
        return None

    # -- layouts ----------------------------------------------------------------------------
    def parse_iso(self, text: str, pos: int = 0) -> tuple[int, int] | None:
        """ISO 8601 / RFC 3339 at ``pos``: (nanoseconds, end index) or None.

        The date-and-seconds head (19 characters) is looked up in a cache; the fraction and
        zone are read by hand. Lines written in the same second share the head.
        """
        head = text[pos : pos + 19]
        base = self._heads.get(head)
        if base is None:
            m = _ISO_HEAD.fullmatch(head)
            if m is None:
                return None
            y, mo, d, h, mi, s = map(int, m.groups())
            utc = self.civil(y, mo, d, h, mi, s, 0)
            local = self.civil(y, mo, d, h, mi, s, None)
            if utc is None or local is None:
                return None
            base = (utc, local)
            if len(self._heads) >= _CACHE_MAX:
                self._heads.clear()
            self._heads[head] = base
        end = pos + 19
        frac = 0
        c = text[end : end + 1]
        if c == "." or c == ",":
            ms = text[end + 1 : end + 4]
            if len(ms) == 3 and ms.isdecimal() and not text[end + 4 : end + 5].isdecimal():
                frac = int(ms) * 1_000_000  # milliseconds, the common case, without the regex
                end += 4
            else:
                fm = _FRACTION.match(text, end)
                if fm is None:
                    return None
                frac = _fraction_ns(fm.group(1))
                end = fm.end()
            c = text[end : end + 1]
        if c == "Z" or c == "z":
            secs = base[0]
            end += 1
        elif c == "+" or c == "-":
            zm = _ZONE.match(text, end)
            if zm is None:
                return None
            offset = _offset_seconds(zm.group(1))
            secs = base[0] - (offset or 0)
            end = zm.end()
        elif (
            c == " "
            and text[end + 1 : end + 4] in ("UTC", "GMT")
            and not text[end + 4 : end + 5].isalpha()
        ):
            secs = base[0]
            end += 4
        elif (
            c == " " and text[end + 1 : end + 2] in ("+", "-") and text[end + 2 : end + 6].isdigit()
        ):
            offset = _offset_seconds(text[end + 1 : end + 6])  # gunicorn's "%Y-%m-%d %H:%M:%S %z"
            secs = base[0] - (offset or 0)
            end += 6
        else:
            secs = base[1]
        ns = secs * NS + frac
        if ns < 0 or ns > MAX_NS:
            return None
        return ns, end

    def parse_apache(self, text: str) -> int | None:
        """``10/Oct/2000:13:55:36 -0700`` (the access-log layout), cached whole."""
        cached = self._apache.get(text)
        if cached is not None:
            return cached
        if len(text) < 20 or text[2] != "/" or text[6] != "/" or text[11] != ":":
            return None
        mo = MONTHS.get(text[3:6])
        if mo is None:
            return None
        try:
            d, y = int(text[0:2]), int(text[7:11])
            h, mi, s = int(text[12:14]), int(text[15:17]), int(text[18:20])
        except ValueError:
            return None
        rest = text[20:]
        frac = None
        if rest[:1] in (".", ","):
            fm = _FRACTION.match(rest)
            if fm is None:
                return None
            frac = fm.group(1)
            rest = rest[fm.end() :]
        rest = rest.strip()
        offset: int | None = None
        if rest:
            zm = _ZONE.fullmatch(rest)
            if zm is None:
                return None
            offset = _offset_seconds(zm.group(1))
        ns = self._ns(y, mo, d, h, mi, s, frac, offset)
        if ns is None:
            return None
        if len(self._apache) >= _CACHE_MAX:
            self._apache.clear()
        self._apache[text] = ns
        return ns

    def parse_syslog(self, text: str, pos: int, wall: float) -> tuple[int, int] | None:
        """``Oct 11 22:14:15`` (optionally with a fraction or a trailing year) at ``pos``."""
        m = _SYSLOG.match(text, pos)
        if m is None:
            return None
        mon, d, h, mi, s, frac, year = m.groups()
        mo = MONTHS.get(mon)
        if mo is None:
            return None
        if year is not None:
            ns = self._ns(int(year), mo, int(d), int(h), int(mi), int(s), frac, None)
        else:
            ns = self.infer_year(mo, int(d), int(h), int(mi), int(s), frac, wall)
        return None if ns is None else (ns, m.end())

    def parse_leading(self, text: str, wall: float) -> tuple[int, int] | None:
        """A timestamp at the start of ``text`` in any common layout: (ns, end) or None.

        Layouts: ISO 8601 (``T`` or space, ``.``/``,`` fraction, zone), ``yyyy/MM/dd HH:mm:ss``,
        ``yy/MM/dd HH:mm:ss``, ``yyMMdd HH:mm:ss``, ``yyMMdd HHmmss``, syslog ``MMM dd HH:mm:ss``,
        ``dd-MMM-yyyy HH:mm:ss``, ``HH:mm:ss.SSS`` (today, in the zone), epoch seconds (10 digits)
        and milliseconds (13 digits), each optionally inside ``[...]``.
        """
        if not text:
            return None
        if text[0] == "[":
            inner = self._leading(text, 1, wall)
            if inner is None:
                return None
            ns, end = inner
            if text[end : end + 1] != "]":
                return None
            return ns, end + 1
        return self._leading(text, 0, wall)

    def _leading(self, text: str, pos: int, wall: float) -> tuple[int, int] | None:
        c = text[pos : pos + 1]
        if not c:
            return None
        if c.isdigit():
            sep = text[pos + 4 : pos + 5]
            if sep == "-":
                return self.parse_iso(text, pos)
            sep2 = text[pos + 2 : pos + 3]
            if sep == "/" or sep2 == "/":
                return self._slashed(text, pos)
            if sep2 == ":":
                return self._time_only(text, pos, wall)
            if sep2 == "-":
                return self._tomcat(text, pos)
            if text[pos + 6 : pos + 7] == " ":
                return self._compact(text, pos)
            return self._epoch(text, pos)
        if c.isupper() and text[pos + 3 : pos + 4] == " ":
            return self.parse_syslog(text, pos, wall)
        return None

    def _slashed(self, text: str, pos: int) -> tuple[int, int] | None:
        m = _SLASHED.match(text, pos)
        if m is None:
            return None
        y, mo, d, h, mi, s, frac = m.groups()
        year = int(y) if len(y) == 4 else 2000 + int(y)
        ns = self._ns(year, int(mo), int(d), int(h), int(mi), int(s), frac, None)
        return None if ns is None else (ns, m.end())

    def _compact(self, text: str, pos: int) -> tuple[int, int] | None:
        m = _COMPACT.match(text, pos)
        if m is None:
            return None
        y, mo, d, h, mi, s, frac = m.groups()
        ns = self._ns(2000 + int(y), int(mo), int(d), int(h), int(mi), int(s), frac, None)
        return None if ns is None else (ns, m.end())

    def _tomcat(self, text: str, pos: int) -> tuple[int, int] | None:
        m = _TOMCAT.match(text, pos)
        if m is None:
            return None
        d, mon, y, h, mi, s, frac = m.groups()
        mo = MONTHS.get(mon)
        if mo is None:
            return None
        ns = self._ns(int(y), mo, int(d), int(h), int(mi), int(s), frac, None)
        return None if ns is None else (ns, m.end())

    def _time_only(self, text: str, pos: int, wall: float) -> tuple[int, int] | None:
        m = _TIME_ONLY.match(text, pos)
        if m is None:
            return None
        h, mi, s, frac = m.groups()
        day = datetime.fromtimestamp(wall, self.zone)
        ns = self._ns(day.year, day.month, day.day, int(h), int(mi), int(s), frac, None)
        return None if ns is None else (ns, m.end())

    def _epoch(self, text: str, pos: int) -> tuple[int, int] | None:
        m = _EPOCH.match(text, pos)
        if m is None:
            return None
        whole, frac = m.groups()
        if len(whole) == 13:
            ns = int(whole) * 1_000_000 + (_fraction_ns(frac) // 1000 if frac else 0)
        else:
            ns = int(whole) * NS + _fraction_ns(frac)
        return ns, m.end()

    def rfc3339_value(self, value: object, wall: float) -> str | None:
        """``format_rfc3339(parse_value(value, wall))``, None when it is no timestamp.

        A value already written as ``yyyy-MM-ddTHH:mm:ss.SSSZ`` is its own output once its
        date-and-seconds head is known to be (a real date, no leap second): most JSON
        loggers write exactly that, so most lines skip both the parse and the format.
        """
        if type(value) is str and len(value) == 24 and value[23] == "Z" and value[19] == ".":
            ms = value[20:23]
            if ms.isascii() and ms.isdigit():
                head = value[:19]
                known = self._canonical.get(head)
                if known:
                    return value
                if known is None:
                    ns = self.parse_value(value, wall)
                    if ns is None:
                        return None
                    out = format_rfc3339(ns)
                    if len(self._canonical) >= _CACHE_MAX:
                        self._canonical.clear()
                    self._canonical[head] = out == value
                    return out
        ns = self.parse_value(value, wall)
        return None if ns is None else format_rfc3339(ns)

    def parse_value(self, value: object, wall: float) -> int | None:
        """A timestamp field's value from structured input (JSON, logfmt): string or number.

        Numbers are epoch seconds, milliseconds, microseconds or nanoseconds by magnitude.
        """
        if type(value) is str:
            if value[4:5] == "-" and value[:1].isdigit():  # ISO 8601, as parse_leading would
                found = self.parse_iso(value)
            elif value.isdigit() and len(value) in (10, 13, 16, 19):
                return self.parse_value(int(value), wall)
            else:
                found = self.parse_leading(value, wall) if value else None
            return None if found is None else found[0]
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            if value != value or value in (float("inf"), float("-inf")) or value < 0:
                return None
            if value >= 1e17:
                ns = int(value)
            elif value >= 1e14:
                ns = int(value * 1000)
            elif value >= 1e11:
                ns = int(value * 1_000_000)
            else:
                ns = int(value * NS)
            return ns if ns <= MAX_NS else None
        if isinstance(value, str) and value:
            if value.isdigit() and len(value) in (10, 13, 16, 19):
                return self.parse_value(int(value), wall)
            found = self.parse_leading(value, wall)
            if found is not None:
                return found[0]
        return None


_HEADS: dict[int, str] = {}


def _head(tm: time.struct_time) -> str:
    date = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}"
    return f"{date}T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"


_last: tuple[int, str] = (-1, "")


def format_rfc3339(ns: int) -> str:
    """RFC 3339 in UTC with as many fraction digits as needed (ms, µs or ns).

    The last result is kept: lines of a log with whole-second times (access logs,
    syslog) repeat it many times in a row.
    """
    global _last
    last = _last
    if ns == last[0]:
        return last[1]
    out = _format(ns)
    _last = (ns, out)
    return out


def _format(ns: int) -> str:
    secs, frac = divmod(ns, NS)
    head = _HEADS.get(secs)
    if head is None:
        if len(_HEADS) >= _CACHE_MAX:
            _HEADS.clear()
        tm = time.gmtime(secs)
        head = time.strftime("%Y-%m-%dT%H:%M:%S", tm) if tm.tm_year >= 1000 else _head(tm)
        _HEADS[secs] = head
    if frac % 1_000_000 == 0:
        return f"{head}.{frac // 1_000_000:03d}Z"
    if frac % 1000 == 0:
        return f"{head}.{frac // 1000:06d}Z"
    return f"{head}.{frac:09d}Z"


def wall_ns(wall: float) -> int:
    """Epoch seconds (``time.time()``) as integer nanoseconds, at microsecond precision."""
    return round(wall * 1_000_000) * 1000
