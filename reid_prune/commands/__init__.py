"""The commands of ``reid-prune``: the only layer that parses arguments and prints.

Each command is one module with one pattern (:mod:`.common` describes it): ``NAME``,
``SUMMARY``, ``DESCRIPTION``, what it takes (``CONFIG``, ``QUIET``), whether it may run
under torchrun (``DISTRIBUTED``), what a Ctrl-C leaves (``INTERRUPTED``), and two
functions, ``add_arguments(parser)`` and ``run(args) -> int``. A command calls a job
(:mod:`reid_prune.jobs`) and prints what it returns. :data:`COMMANDS` lists them in the
order of ``reid-prune --help``; :mod:`reid_prune.cli` builds the parser from it.
"""

from . import bench, evaluate, export, extract, import_, plot, prune, sensitivity, synth, train, visrank

COMMANDS = (train, import_, evaluate, prune, export, extract, synth, sensitivity, visrank, plot, bench)

__all__ = ["COMMANDS"]
