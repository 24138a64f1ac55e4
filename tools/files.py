"""Files the console tools write appear whole or not at all: the text goes to a temporary file
in the same folder, renamed over the target only once it is complete, so a failing run (or `-o`
naming the input) never leaves the user's file empty or half-written."""

from __future__ import annotations

import os
import tempfile

from autosp.common.errors import AutoSPError


def write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise AutoSPError(f"cannot write {path}: {err.strerror or err} ({folder})") from None
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
