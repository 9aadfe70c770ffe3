"""The cache-key policy of bench cells: which config keys enter a cell's key, and at which values.

A cell's key is readable (``prune-cuhk03_market-HaoLi-0.5-s0-ft1-...``) and ends with a hash
of everything that determines the model it leaves: its resolved run config, without the
settings that change only how fast it runs or how it is scored, and its parent's key. The
classes of config keys are tags declared beside each key's default
(:data:`reid_prune.config_fields.TAGS`), so a new key is classified there, once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

from ..config import Config, ConfigError, nest, tagged_keys
from ..config_fields import merge
from ..distributed import env_world_size
from ..jobs.prune import pruner_from_config

# Settings that change how fast a cell runs, not what it computes: left out of the cell key. The memory
# format changes only the order of the same float32 sums; train.amp (the precision) is part of the key.
UNHASHED = tagged_keys(Config(), "unhashed")
# Config keys added after the first benches ran: left out of the cell key while at their defaults, so cells
# cached before they existed keep their keys.
LATER_KEYS = tagged_keys(Config(), "later")
# Settings that only change how a finished model is scored. They enter a cell's key at their default
# values, whatever the bench says, so that changing them re-scores cached models (scoring.py) and the
# keys of cells computed with the defaults stay what they were. A cell whose own computation reads one
# (see reads_evaluation) keeps its real value in the key. The eval section's come first: results.json
# and results.md have listed them in this order since the first benches.
EVAL_ONLY = tuple(sorted(tagged_keys(Config(), "eval_only"), key=lambda key: not key.startswith("eval.")))
# Version of the pruning methods' rules, in every pruned cell's key: cells cut by older rules are not reused.
PRUNING_RULES = 2


def _slot(values: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """(the mapping that holds dotted ``key`` in nested ``values``, its name there); a tagged section's key
    ends in '.' (``prune.``)."""
    *sections, name = key.rstrip(".").split(".")
    for section in sections:
        values = values[section]
    return values, name


def _value(values: dict[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in nested ``values``."""
    node, name = _slot(values, key)
    return node[name]


def eval_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The evaluation-only settings of a config dict (``Config.to_dict()``): {"eval.metric": ..., ...}."""
    return {key: _value(config, key) for key in EVAL_ONLY}


def with_eval_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """A copy of ``cfg`` scored with ``settings`` ({"eval.metric": ..., ...}).

    Raises:
        ConfigError: a key or value the config refuses.
    """
    cfg = copy.deepcopy(cfg)
    for key, value in settings.items():
        merge(cfg, nest(key.split("."), value))
    return cfg


def reads_evaluation(cfg: Config, where: str) -> tuple[str, ...]:
    """The evaluation settings (of :data:`EVAL_ONLY`) the configured pruning method's own decisions depend on.

    Each criterion and schedule declares them (``reads``; :attr:`reid_prune.pruners.Pruner.reads`).

    Raises:
        ConfigError: the method refuses its settings (the message starts with ``where``).
    """
    try:
        pruner = pruner_from_config(cfg)
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return tuple(key for key in EVAL_ONLY if key in pruner.reads)


def hashed(cfg: Config, reads: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of a cell's config that enters its key (see the module constants), as nested dicts.

    ``reads``: the evaluation-only settings the cell's own computation reads (:func:`reads_evaluation`),
    kept at their values; the others enter at their defaults.
    """
    values = cfg.to_dict()
    defaults = Config().to_dict()
    for key in UNHASHED:
        node, name = _slot(values, key)
        node.pop(name)
    for key in LATER_KEYS:
        node, name = _slot(values, key)
        if node[name] == _value(defaults, key):
            node.pop(name)
    for key in EVAL_ONLY:
        if key not in reads:
            node, name = _slot(values, key)
            node[name] = _value(defaults, key)
    return values


def cell_key(prefix: str, spec: dict[str, Any]) -> str:
    """``PREFIX-HASH``: ``prefix`` with every run of characters other than letters, digits, '_', '.' and '-'
    made '-', and the first 10 hex digits of the SHA-1 of ``spec`` (JSON, keys sorted)."""
    world = env_world_size()
    if world > 1:
        # N ranks train with a global batch of N x P x K images: another experiment than one process's.
        spec = {**spec, "world_size": world}
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', prefix)}-{digest}"
