"""File tail: ``--tail GLOB`` with rotation and a checkpoint file.

Polling, not inotify: it works the same on every filesystem a pod may mount
(overlay, NFS, hostPath) and costs one ``stat`` per file per interval.

Files are known by identity (device, inode), not by name, which is what makes
rotation simple:

- rotation by rename (logrotate's default, Python's RotatingFileHandler): the
  open descriptor keeps reading the renamed file to its end; the new file at
  the old name is another inode, read from its start. A file whose name no
  longer matches stays open for ``rotate_wait`` seconds after its last byte
  (an app writes a little more before it reopens), then is closed.
- copytruncate: same inode, size now below our offset: read again from 0.
  (Lines written between the copy and the truncate are lost; that is inherent
  to copytruncate, the reason to prefer rename.)

The checkpoint file (JSON: path, device, inode, offset per file; written
atomically: temporary file, fsync, rename) is what a restart resumes from,
like Fluentd's pos_file and Fluent Bit's DB. At a clean exit it holds the
offset right after the last line handed to the output (an unterminated last
line is left to be read again), so a restart neither loses nor repeats a
line. In between it is saved every second with the offset of the last moment
when no record of that file was pending in the pipeline: after a crash lines
may be repeated, never lost. A checkpointed file that was renamed while the
adapter was down is found again by its inode in the same directory.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from sidecar_common.jsonlog import get_logger, log_event

from ..buffer import write_atomically
from . import Dispatcher, Source

__all__ = ["CheckpointEntry", "Tailer", "load_checkpoint", "save_checkpoint"]

log = get_logger("adapter.tail")

STREAM = "file"
READ_SIZE = 65536
#: Bytes read from one file per round, so one busy file cannot starve the others.
ROUND_BUDGET = 1 << 20
#: A rotated file is closed this long after its last byte was read.
ROTATE_WAIT = 2.0
CHECKPOINT_INTERVAL = 1.0

Key = tuple[int, int]


@dataclass(frozen=True)
class CheckpointEntry:
    path: str
    dev: int
    inode: int
    offset: int


def load_checkpoint(path: Path) -> dict[Key, CheckpointEntry]:
    """The entries of checkpoint file ``path``; missing or unreadable means none."""
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log_event(
            log,
            "checkpoint file unreadable; starting without it",
            level=logging.WARNING,
            path=str(path),
            error=str(exc),
        )
        return {}
    out: dict[Key, CheckpointEntry] = {}
    for item in data.get("files", []) if isinstance(data, dict) else []:
        try:
            entry = CheckpointEntry(
                str(item["path"]), int(item["dev"]), int(item["inode"]), int(item["offset"])
            )
        except (KeyError, TypeError, ValueError):
            continue
        out[(entry.dev, entry.inode)] = entry
    return out


def save_checkpoint(path: Path, entries: list[CheckpointEntry]) -> None:
    doc = {"version": 1, "files": [vars(e) for e in sorted(entries, key=lambda e: e.path)]}
    write_atomically(path, json.dumps(doc, indent=1).encode() + b"\n")


@dataclass(eq=False)
class _File:
    key: Key
    path: str
    fd: int
    offset: int  # bytes read so far (the descriptor's position)
    source: Source
    clean_offset: int  # checkpointable while running (see the module docstring)
    matched: bool = True  # its name still matches the glob
    eof_since: float | None = None

    def line_offset(self) -> int:
        """Offset of the first byte not yet handed on as part of a line."""
        return self.offset - self.source.splitter.pending_bytes


class Tailer:
    """Follows the files matching ``patterns``; ``run`` until cancelled, then ``finish``."""

    def __init__(
        self,
        patterns: list[str],
        dispatcher: Dispatcher,
        *,
        checkpoint: Path | None = None,
        interval: float = 0.25,
        rotate_wait: float = ROTATE_WAIT,
    ) -> None:
        self._patterns = patterns
        self._dispatcher = dispatcher
        self._checkpoint = checkpoint
        self._interval = interval
        self._rotate_wait = rotate_wait
        self._files: dict[Key, _File] = {}
        self._saved: list[CheckpointEntry] | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._resume()
        task_status.started()
        next_save = trio.current_time() + CHECKPOINT_INTERVAL
        while True:
            busy = await self.poll_once()
            if trio.current_time() >= next_save:
                self.save(final=False)
                next_save = trio.current_time() + CHECKPOINT_INTERVAL
            await trio.sleep(0 if busy else self._interval)

    async def finish(self) -> None:
        """At exit: pending records out, unterminated lines kept for later, checkpoint saved."""
        for f in list(self._files.values()):
            await self._dispatcher.close(f.source, partial=False)
        self.save(final=True)
        for f in list(self._files.values()):
            self._forget(f)

    # -- checkpoint ------------------------------------------------------------

    def entries(self, *, final: bool) -> list[CheckpointEntry]:
        out = []
        for f in self._files.values():
            if final:
                offset = f.line_offset()
            else:
                if f.source.idle:
                    f.clean_offset = f.line_offset()
                offset = f.clean_offset
            out.append(CheckpointEntry(f.path, f.key[0], f.key[1], offset))
        return out

    def save(self, *, final: bool) -> None:
        if self._checkpoint is None:
            return
        entries = self.entries(final=final)
        if entries == self._saved:
            return
        try:
            save_checkpoint(self._checkpoint, entries)
        except OSError as exc:
            log_event(
                log,
                "cannot write the checkpoint file",
                level=logging.ERROR,
                path=str(self._checkpoint),
                error=exc.strerror or str(exc),
            )
            return
        self._saved = entries

    def _resume(self) -> None:
        """Open the files of the checkpoint and of the globs at their starting offsets."""
        known = load_checkpoint(self._checkpoint) if self._checkpoint is not None else {}
        for key, path in self._match().items():
            entry = known.pop(key, None)
            self._open(key, path, entry.offset if entry is not None else 0)
        # Files renamed away while we were down: find them by inode next to their old name.
        for key, entry in known.items():
            directory = os.path.dirname(entry.path) or "."
            with contextlib.suppress(OSError):
                for dirent in os.scandir(directory):
                    if dirent.inode() != entry.inode or not dirent.is_file():
                        continue
                    st = dirent.stat()
                    if (st.st_dev, st.st_ino) == key:
                        f = self._open(key, dirent.path, entry.offset)
                        if f is not None:
                            f.matched = False
                        break

    # -- polling ---------------------------------------------------------------

    def _match(self) -> dict[Key, str]:
        found: dict[Key, str] = {}
        for pattern in self._patterns:
            for path in sorted(glob.glob(pattern, recursive=True)):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.setdefault((st.st_dev, st.st_ino), path)
        return found

    def _open(self, key: Key, path: str, offset: int) -> _File | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log_event(
                log,
                "cannot open file",
                level=logging.WARNING,
                path=path,
                error=exc.strerror or str(exc),
            )
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:  # replaced between stat and open: next round
            os.close(fd)
            return None
        if st.st_size < offset:
            log_event(
                log,
                "file shorter than its checkpoint; reading from the start",
                level=logging.WARNING,
                path=path,
                offset=offset,
                size=st.st_size,
            )
            offset = 0
        os.lseek(fd, offset, os.SEEK_SET)
        source = self._dispatcher.open(STREAM, path=path)
        f = _File(key, path, fd, offset, source, clean_offset=offset)
        self._files[key] = f
        log_event(log, "tailing file", path=path, offset=offset)
        return f

    def _forget(self, f: _File) -> None:
        self._files.pop(f.key, None)
        with contextlib.suppress(OSError):
            os.close(f.fd)

    async def poll_once(self) -> bool:
        """One round: notice new, rotated and truncated files, read what was appended.

        Returns True when some file has more to read right away.
        """
        matches = self._match()
        for key, f in self._files.items():
            path = matches.get(key)
            f.matched = path is not None
            if path is not None:
                f.path = path
        for key, path in matches.items():
            if key not in self._files:
                self._open(key, path, 0)
        busy = False
        now = trio.current_time()
        for f in list(self._files.values()):
            busy |= await self._read(f)
            if f.matched or f.eof_since is None:
                continue
            if now - f.eof_since >= self._rotate_wait:
                log_event(log, "rotated file done", path=f.path, offset=f.offset)
                await self._dispatcher.close(f.source, partial=True)
                self._forget(f)
        return busy

    async def _read(self, f: _File) -> bool:
        try:
            size = os.fstat(f.fd).st_size
        except OSError:
            return False
        if size < f.offset:
            log_event(
                log,
                "file truncated (copytruncate); reading from the start",
                level=logging.WARNING,
                path=f.path,
                offset=f.offset,
                size=size,
            )
            # The unterminated tail of the old content is a line of its own.
            await self._dispatcher.end_partial(f.source)
            os.lseek(f.fd, 0, os.SEEK_SET)
            f.offset = 0
            f.clean_offset = 0
        budget = ROUND_BUDGET
        while budget > 0:
            try:
                data = os.read(f.fd, READ_SIZE)
            except OSError as exc:
                log_event(
                    log,
                    "read error",
                    level=logging.WARNING,
                    path=f.path,
                    error=exc.strerror or str(exc),
                )
                return False
            if not data:
                if f.eof_since is None:
                    f.eof_since = trio.current_time()
                return False
            f.eof_since = None
            f.offset += len(data)
            budget -= len(data)
            await self._dispatcher.feed(f.source, data)
            if f.source.idle:
                f.clean_offset = f.line_offset()
        return True
