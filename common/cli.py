"""The one entry of every stage's command line: logging, parsing, exit codes.

Exit codes, the same for every ``python -m <stage>`` (docs/contracts.md, "Command lines"):

* ``0``: done;
* ``1``: a failure the user can act on (a missing file, bad input data, a service that does not
  answer, a refused deployment): one ``error: ...`` line on stderr, no traceback;
* ``2``: a usage error, i.e. the command line itself is wrong (argparse's own errors, or
  :class:`UsageError` for option combinations argparse cannot check).

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

OK, FAILED, USAGE = 0, 1, 2
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
SERVER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""Long-running servers (the gateway, the container's entry point) also log the level."""


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2)."""


def setup_logging(verbose: bool = False, *, server: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) on stderr; chatty libraries at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format=SERVER_LOG_FORMAT if server else LOG_FORMAT,
                        datefmt=None if server else "%H:%M:%S")
    for noisy in ("py4j", "urllib3", "botocore", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            errors: tuple[type[BaseException], ...] = (), *, logs: bool = True) -> int:
    """Every stage's ``main``: parse, set up logging (``logs``; ``--verbose`` when the parser
    has it), run the chosen command (``args.fn``) and map the stage's expected ``errors`` to
    exit 1 and :class:`UsageError` to exit 2, each as one ``error: ...`` line on stderr."""
    args = parser.parse_args(argv)
    if logs:
        setup_logging(getattr(args, "verbose", False))
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return FAILED


__all__ = ["OK", "FAILED", "USAGE", "UsageError", "setup_logging", "run_cli", "LOG_FORMAT",
           "SERVER_LOG_FORMAT"]
