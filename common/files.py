"""Files appear whole or not at all: the text goes to a temporary file in the same folder,
renamed over the target only once it is complete, so a reader (another rank) never sees half a
file, a failing run never leaves the user's file empty, and a failed write (a full disk) leaves
no temporary file behind."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace `path` by `text`, keeping an existing target's permissions. OSError on failure."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "is a folder; give a file name", path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if os.path.exists(path):  # keep the target's permissions, not mkstemp's 0600
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
