"""User-facing errors: one clear line, a non-zero exit, no traceback.

Programs raise `UserError` (or a subclass) for bad input they can name: a missing file, an
unreadable video, a foreign folder passed as a faceset. `cli_main` turns it into `error: ...` on
stderr and exit code 2, so scripts can tell bad input from crashes.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from absl import app, flags, logging


class UserError(Exception):
    """Bad input or environment, explained in one line that names the file and what is wrong."""


def read_bytes(path: str) -> bytes:
    """The whole file, or a UserError naming it (missing, a folder, no permission)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def check_command_line(argv: Sequence[str], *required: flags.FlagHolder[Any], quiet: bool = True) -> None:
    """The checks every command starts with: no stray positional arguments and its required flags
    given (a UserError names the first missing one); with `quiet`, INFO logging (absl's, orbax's
    line per save) is silenced unless --verbosity was given."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in required:
        if not flag.value:
            raise UserError(f"--{flag.name} is required")
    if quiet and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def cli_main(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
    """Wraps an absl `main(argv)` so a UserError prints one line and exits with status 2."""

    def wrapped(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapped


def run_app(main: Callable[[Sequence[str]], None]) -> None:
    """Entry point used by `python -m ...` and the console scripts."""
    app.run(cli_main(main))
