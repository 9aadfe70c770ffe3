"""The ``reid-prune`` command line: the parser, built from :data:`reid_prune.commands.COMMANDS`, and ``main``."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from .commands import COMMANDS
from .commands.common import NOTHING_WRITTEN, USER_ERRORS, add_config_args, error, show_warning
from .outputs import interrupt_behind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-prune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train person re-ID feature extractors and make them cheap to run by structured pruning.",
        epilog="Run 'reid-prune COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.SUMMARY, description=f"{command.SUMMARY}.\n\n{command.DESCRIPTION}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=command.run, spec=command)
        if command.CONFIG:
            add_config_args(p)
        if command.QUIET:
            p.add_argument("--quiet", action="store_true", help="no progress bars or dataset summaries")
        command.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .distributed import env_world_size, process_group_from_env

        if env_world_size() > 1 and not args.spec.DISTRIBUTED:
            allowed = [c.NAME for c in COMMANDS if c.DISTRIBUTED]
            raise ValueError(f"{args.command} runs as one process; start it without torchrun "
                             f"(torchrun is for {', '.join(allowed[:-1])} and {allowed[-1]})")
        with process_group_from_env(), warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.func(args)
    except USER_ERRORS as exc:
        error(args, exc)
        return 2
    except (KeyboardInterrupt, Exception) as exc:
        if interrupt_behind(exc) is None:  # a Ctrl-C that a C++ writer turned into another error counts too
            raise
        print(f"\nreid-prune {args.command}: interrupted; {args.spec.INTERRUPTED or NOTHING_WRITTEN}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
