"""Writes that a kill at any moment leaves whole: the new copy is written beside its final name and
put in place by one rename, so whoever reads the name (a resumed run, a user loading the model)
finds the whole previous copy or the whole new one, never a mix or a gap."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from pathlib import Path

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def write_json_atomically(path: Path, value) -> None:
    """`value` as JSON in `path`, through a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def replace_folder(new: Path, folder: Path) -> None:
    """Put the complete folder `new` at `folder`, removing what was there.

    Where `folder` exists the two are swapped by one atomic rename (Linux's renameat2 with
    RENAME_EXCHANGE) and the old copy, now at `new`, is then removed. Where that call is missing
    (another system, a filesystem without it), the old copy is first renamed to `<folder>.old`: a
    kill between the two renames leaves the name empty for that moment, and `recover_folder`
    puts the old copy back."""
    new, folder = Path(new), Path(folder)
    if folder.exists() and _exchange(new, folder):
        shutil.rmtree(new)
        return
    old = sibling(folder, ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(folder: Path) -> None:
    """After a kill inside `replace_folder`'s fallback: the old copy back under its name."""
    folder = Path(folder)
    old = sibling(folder, ".old")
    if not folder.exists() and old.exists():
        old.rename(folder)


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
