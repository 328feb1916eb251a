"""One CLI entry: run_cli's exit codes and its one-line errors."""
from __future__ import annotations

import argparse

import pytest

from common.cli import FAILED, OK, USAGE, UsageError, run_cli


def _parser(fn) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--n", type=int, default=0)
    p.set_defaults(fn=fn)
    return p


def test_ok_failure_and_usage_codes(capsys):
    def fn(a):
        if a.n == 1:
            raise FileNotFoundError("no such file: x")
        if a.n == 2:
            raise UsageError("--n 2 needs --m")
        return OK

    assert run_cli(_parser(fn), [], (FileNotFoundError,), logs=False) == OK
    assert run_cli(_parser(fn), ["--n", "1"], (FileNotFoundError,), logs=False) == FAILED
    assert capsys.readouterr().err == "error: no such file: x\n"
    assert run_cli(_parser(fn), ["--n", "2"], logs=False) == USAGE
    assert capsys.readouterr().err == "error: --n 2 needs --m\n"
    with pytest.raises(SystemExit) as e:           # argparse's own usage errors: exit 2 too
        run_cli(_parser(fn), ["--n", "x"], logs=False)
    assert e.value.code == USAGE


def test_unexpected_errors_keep_their_traceback():
    def fn(a):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(_parser(fn), [], (FileNotFoundError,), logs=False)
