"""python -m realtime {evaluate,redis} --help

* ``evaluate``: the offline replay of the P1 test period with and without recent events
  (``OUT/realtime.json``'s offline part; :mod:`realtime.evaluate`);
* ``measure``: freshness and store read latency through a running gateway
  (``OUT/realtime.json``'s live part; :mod:`realtime.live`);
* ``redis start|stop|status``: a local ``redis-server`` for ``make serve`` and the tests
  (:mod:`realtime.redis_server`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from common.cli import run_cli

COMMANDS = ("evaluate", "live", "redis_server")
"""Modules that each add their subcommand with ``add_parser(sub)``."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m realtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"realtime.{name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv, (OSError, ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
