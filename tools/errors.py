"""One error line and a non-zero exit for the console tools: no tracebacks for user errors."""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable
from typing import NoReturn

from xdsl.utils.exceptions import DiagnosticException, ParseError, VerifyException

from autosp.common.errors import AutoSPError


def one_line(err: BaseException) -> str:
    if isinstance(err, ParseError):
        loc = err.span.get_location()
        return f"{loc.file}:{loc.line}:{loc.col}: {err.msg}"
    text = str(err).strip()
    # xDSL's verifier prints the whole module after the message; keep the message.
    return text.splitlines()[0] if text else type(err).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one error line (not the whole usage) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """The same for a parser made elsewhere (xdsl-opt's)."""
    parser.error = types.MethodType(OneLineParser.error, parser)  # type: ignore[method-assign]


def run_cli(prog: str, main: Callable[[], None]) -> None:
    try:
        main()
    except (AutoSPError, ParseError, VerifyException, DiagnosticException, ValueError, OSError) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
