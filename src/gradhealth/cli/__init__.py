"""The ``gradhealth`` command: one sub-command per module of this package.

Every user mistake ends as ``error: <sentence>`` on stderr and exit status 2 (usage/config) or
1 (the run failed); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from gradhealth import __version__
from gradhealth.errors import GradHealthError
from gradhealth.runlock import release_all as _release_all

__all__ = ["COMMANDS", "build_parser", "main"]

# sub-command modules, each with add_parser(subparsers) and run(args) -> int
COMMANDS = [
    "gradhealth.cli.list_models",
    "gradhealth.cli.list_data",
    "gradhealth.cli.theory",
    "gradhealth.cli.report",
    "gradhealth.cli.train",
    "gradhealth.cli.diagnose",
    "gradhealth.cli.fix",
    "gradhealth.cli.study",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2, like every other usage error
        print(f"error: {message} (see {self.prog} --help).", file=sys.stderr)
        raise SystemExit(2)


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is so that every phase ends the same way."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signame = signal.Signals(signum).name


def _stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _answer_signals() -> None:
    """From here on SIGINT and SIGTERM end the command with a sentence and exit 130 in every phase
    (imports, data, model, writing); the training loop puts its own graceful stop on top."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradhealth", description="Find, explain and fix vanishing and exploding gradients.")
    parser.add_argument("--version", action="version", version=f"gradhealth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def main(argv: Sequence[str] | None = None) -> int:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _answer_signals()
    try:
        return _main(argv)
    finally:
        _release_all()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, as the error messages suggest it
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except GradHealthError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # atomic writes finish before a signal is answered, so every file already there is whole
        print(f"error: interrupted by {getattr(exc, 'signame', 'SIGINT')} before the command finished.",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gradhealth ... | head` closed the pipe: not an error of ours
        return 0
    except Exception as exc:  # a bug, not a user mistake: say so in one line unless debugging
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            where = f"holding {exc.filename} " if exc.filename else ""
            print(f"error: the disk {where}is full; free some space or pass an --out on another disk.",
                  file=sys.stderr)
            return 1
        if _out_of_memory(exc):  # a size the machine cannot hold: the user's to change, not a bug
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"error: not enough memory for this run ({first}); use a smaller model, data set or batch.",
                  file=sys.stderr)
            return 1
        print(f"error: internal error {type(exc).__name__}: {exc} (run with --debug for the traceback).",
              file=sys.stderr)
        traceback.clear_frames(exc.__traceback__)
        return 1
