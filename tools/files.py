"""Files the console tools write appear whole or not at all (common/files.py): a failing run, or
`-o` naming the input, never leaves the user's file empty or half-written."""

from __future__ import annotations

import os

from autosp.common.errors import AutoSPError
from autosp.common.files import write_atomically as _write


def write_atomically(path: str, text: str) -> None:
    try:
        _write(path, text)
    except OSError as err:
        raise AutoSPError(f"cannot write {path}: {err.strerror or err} ({os.path.dirname(os.path.abspath(path))})") from None
