"""Looking at models and pruning: layer sensitivity and per-group rates, kept widths, learning curves.

Modules (imported one by one; each pulls in only what it needs):

* :mod:`~reid_prune.analysis.sensitivity`: prune each channel group alone at several rates and
  evaluate (``reid-prune sensitivity``);
* :mod:`~reid_prune.analysis.allocation`: per-group rates that meet a MACs budget with the
  least predicted mAP loss, from the measured sensitivity curves;
* :mod:`~reid_prune.analysis.widths`: the channels each group kept after pruning (``widths.png``);
* :mod:`~reid_prune.analysis.curves`: learning curves from ``metrics.jsonl`` (``reid-prune plot``);
* :mod:`~reid_prune.analysis.visrank_job`: ranked-retrieval pictures of a checkpoint (``reid-prune visrank``);
* :mod:`~reid_prune.analysis.plotting`: the optional matplotlib dependency (the ``plot`` extra).
"""
