"""What every command shares: the run-config flags, errors, warnings and report tables.

A command is a module of this package with one pattern (see :mod:`reid_prune.commands`)::

    NAME = "eval"                      # the word users type
    SUMMARY = "one line for reid-prune --help"
    DESCRIPTION = "what it does, with examples"
    CONFIG = True                      # takes --config YAML and --set KEY=VALUE (a run config)
    QUIET = True                       # takes --quiet
    DISTRIBUTED = False                # may run as several processes under torchrun
    INTERRUPTED = None                 # what a Ctrl-C leaves (None: nothing was written)

    def add_arguments(parser): ...     # its own flags
    def run(args) -> int: ...          # call a job, print what it returned; the exit code
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import Config, ConfigError, load_config, nest, parse_override
from .argtypes import int_at_least
from .report import format_table, metric_rows

# Mistakes a user can fix: reported in one line with exit code 2, without a traceback.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError)
# What a Ctrl-C leaves when a command says nothing else.
NOTHING_WRITTEN = "nothing was written (run the command again to start over)"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config YAML (required) and --set KEY=VALUE (repeatable): the run config of a command."""
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="YAML config; keys it omits take the defaults in reid_prune/config.py "
                             "(the prune section: reid_prune/pruners/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.epochs=5 (repeatable)")


def add_checkpoint_job_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --output DIR and --seed, shared by sensitivity and visrank."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and tables")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="seed of the queries or identities drawn (default: 0)")


def load_run_config(args: argparse.Namespace, *flags: dict[str, Any]) -> Config:
    """The config of ``--config`` and ``--set``, then the command's own flags, which win over both.

    ``flags``: {dotted config key: value} of the flags the user gave (None writes null), applied in order.
    """
    values = [nest(key.split("."), value) for group in flags for key, value in group.items()]
    return load_config(args.config, args.overrides, after=values)


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave: {key: value} without the None of flags left out."""
    return {key: value for key, value in flags.items() if value is not None}


def method_flags(args: argparse.Namespace) -> dict[str, Any]:
    """--method, --scope and --option KEY=VALUE as prune.* config keys (for prune and sensitivity)."""
    flags = given({"prune.method": args.method, "prune.scope": args.scope})
    for text in args.option:
        if "=" not in text or not text.partition("=")[0].strip():
            raise ConfigError(f"--option {text!r}: expected KEY=VALUE, for example --option greedy=true")
        keys, value = parse_override(f"prune.options.{text}")  # errors name the config key it sets
        flags[".".join(keys)] = value
    return flags


def print_report(title: str, report: dict[str, Any]) -> None:
    """A model report (:func:`~reid_prune.jobs.evaluate.model_report`) as a two-column table under ``title``."""
    print(f"\n{title}")
    print(format_table(("metric", "value"), metric_rows(report)))


def error(args: argparse.Namespace, exc: BaseException) -> None:
    """``reid-prune COMMAND: error: MESSAGE`` on stderr."""
    print(f"reid-prune {args.command}: error: {exc}", file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line naming the command, like errors, instead of Python's file:line form."""
    print(f"reid-prune: warning: {message}", file=sys.stderr)
