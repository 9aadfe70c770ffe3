"""Reading models and runs: per-group rates from sensitivity curves, kept widths, learning curves, plotting.

Modules (imported one by one; each pulls in only what it needs):

* :mod:`~reid_prune.analysis.allocation`: per-group rates that meet a MACs budget with the
  least predicted mAP loss, from measured sensitivity curves (the sweep itself is the job
  :mod:`reid_prune.jobs.sensitivity`);
* :mod:`~reid_prune.analysis.widths`: the channels each group kept after pruning (``widths.png``);
* :mod:`~reid_prune.analysis.curves`: learning curves from ``metrics.jsonl`` (``reid-prune plot``);
* :mod:`~reid_prune.analysis.plotting`: the optional matplotlib dependency (the ``plot`` extra).
"""
