"""Write a directory the way kubelet's AtomicWriter updates a ConfigMap or Secret volume.

kubelet writes the new content into a fresh timestamped directory, points a
``..data_tmp`` symlink at it, renames that over ``..data`` (one atomic step), and
keeps user-visible ``key -> ..data/key`` symlinks. A watch on the file itself
misses this; the sidecars' watcher must not.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path


def write_configmap(volume: Path, data: Mapping[str, str]) -> None:
    """Create or update ``volume`` with ``data`` (key -> content), atomically."""
    volume.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"
    new_dir = volume / stamp
    new_dir.mkdir()
    for key, content in data.items():
        (new_dir / key).write_text(content)
    data_link = volume / "..data"
    old_target = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = volume / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(stamp, tmp_link)
    os.rename(tmp_link, data_link)
    for key in data:
        visible = volume / key
        if not visible.is_symlink():
            os.symlink(f"..data/{key}", visible)
    if old_target is not None and old_target != stamp:
        shutil.rmtree(volume / old_target, ignore_errors=True)
