"""Jobs: a :class:`~reid_prune.config.Config` (or a checkpoint) in, files and a report out.

One module per job: :mod:`.train`, :mod:`.evaluate`, :mod:`.prune`, :mod:`.sensitivity`,
:mod:`.visrank`, :mod:`.extract` and :mod:`.export`; :mod:`.wiring` builds the dataset,
its loaders and the model's build arguments from a config. A job resolves its
:class:`~reid_prune.runtime.Runtime` once, at its door, and hands it down to the engine
and the pruners. Commands (:mod:`reid_prune.commands`) call jobs; jobs never print tables
or parse arguments. The package's root (``reid_prune.train``, ``reid_prune.prune_checkpoint``,
...) exports the jobs for notebooks.
"""
