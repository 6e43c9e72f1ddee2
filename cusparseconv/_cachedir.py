"""The persistent cache directory (tuning results, emulator builds): private or not used.

``$CUSPARSECONV_CACHE_DIR`` when set, else ``~/.cache/cusparseconv``. The
emulator loads shared objects from it and the tuner trusts its JSON, so a
directory anyone else can write is refused: it must belong to the current
user and be writable by no one else (created with mode 0700). A hash stored
beside a binary would prove nothing against someone who can write there.
When the directory is refused, is a file, or cannot be created or written,
:func:`private_dir` says why and the callers carry on without it (the tuner
keeps its results in memory, the emulator builds into a private temporary
directory).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["cache_root", "private_dir"]


def cache_root() -> Path:
    """``$CUSPARSECONV_CACHE_DIR`` or ``~/.cache/cusparseconv`` (not checked)."""
    root = os.environ.get("CUSPARSECONV_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "cusparseconv"


def _refusal(path: Path) -> str | None:
    try:
        info = os.stat(path)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to user id {info.st_uid}, not to the current user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                f"`chmod 700 {path}` or choose another CUSPARSECONV_CACHE_DIR")
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def private_dir(subdir: str = "") -> tuple[Path | None, str | None]:
    """The cache directory (or its ``subdir``), created with mode 0700 if missing.

    Returns
    -------
    (path, None)
        When the directory is usable: owned by the current user, writable by
        no one else, writable by us.
    (None, reason)
        Otherwise, with a sentence saying why.
    """
    root = cache_root()
    path = root / subdir if subdir else root
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        return None, f"{path} exists and is not a directory"
    except NotADirectoryError:
        return None, f"a component of {path} is a file, not a directory"
    except OSError as error:
        return None, f"{path} cannot be created ({error.strerror})"
    for directory in ((root, path) if subdir else (path,)):
        reason = _refusal(directory)
        if reason is not None:
            return None, reason
    return path, None
