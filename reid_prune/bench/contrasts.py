"""The pre-declared paired contrasts of a bench's results (issue 21): which rows are compared, paired how,
and their lines in results.md; the statistics themselves are :mod:`.stats`'.

Every contrast is on mAP, paired by (baseline seed, fine-tuning seed), in one family per results table and
budget: each method minus Random at its widths (the criterion), Random at a method's widths minus Random
(the allocation), each pruned, anchor and scratch row minus Dense (the cost of pruning).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any, Callable, Sequence

from .stats import Paired, holm_family, paired_difference

CONTROL = "random"  # the registered method every other method is compared with
COMPARED = ("pruned", "anchor", "scratch")  # the kinds that enter the contrasts
ALPHA = 0.05  # family-wise error rate of each family of contrasts (one table at one budget)
LEVEL = 0.95  # the level of each contrast's own (unadjusted) t interval
# A criterion contrast with the Random row that plans its own widths isolates the criterion only where the
# method allocates its widths as Random does, which the run does not check: results.md marks it.
ASSUMED = "assumes Random's allocation"
# The pruners meet a MACs budget within 0.02 (pruners/budget.py): a row further from the control's
# MACs (AFP+PRC stops where its tolerance says) is not at the same budget.
SAME_BUDGET = 0.02


def group_by(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups

def markdown_table(headers: Sequence[str], lines: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)

def _paired(runs: list[dict[str, Any]], key: str) -> dict[tuple[Any, Any], Any]:
    return {(r["seed"], r["finetune_seed"]): r[key] for r in runs}


def _same_budget(runs: list[dict[str, Any]], control: list[dict[str, Any]]) -> str:
    """Why ``runs`` are not at the control's budget ("" when every paired run keeps MACs within SAME_BUDGET)."""
    kept, own = _paired(control, "macs_kept"), _paired(runs, "macs_kept")
    pairs = [(own[k], kept[k]) for k in own if k in kept]
    if any(a is None or b is None for a, b in pairs):
        return "not compared: MACs kept unknown"
    if any(abs(a - b) > SAME_BUDGET for a, b in pairs):
        return (f"not compared: other budget ({statistics.fmean(a for a, _ in pairs):.3f} of the MACs kept, "
                f"Random {statistics.fmean(b for _, b in pairs):.3f})")
    return ""


def _contrast(kind: str, a: str, b: str, names: dict[str, list[dict[str, Any]]], note: str = "") -> dict[str, Any]:
    """Row ``a`` minus row ``b`` on mAP, paired by (seed, finetune_seed); not tested when ``note`` says why not."""
    test = paired_difference(_paired(names[a], "mAP"), _paired(names[b], "mAP"), LEVEL)
    if note.startswith("not compared"):
        test = Paired(test.n, test.unpaired, None, None, None, None, LEVEL, None, None)
    return {"contrast": f"{a} − {b}", "kind": kind, "a": a, "b": b, "note": note, "test": test}


def _family(names: dict[str, list[dict[str, Any]]], here: list[str], dense: str | None) -> list[dict[str, Any]]:
    """The pre-declared contrasts of one table at one budget (``here``: its compared rows, in table order)."""
    first = {name: names[name][0] for name in here}
    randoms = [n for n in here if first[n]["method"] == CONTROL and first[n]["kind"] == "pruned"]
    control = next((n for n in randoms if not first[n]["same_widths_as"]), None)
    out = []
    for name in here:  # (a) criterion: the method against Random at the same widths
        row = first[name]
        if row["kind"] not in ("pruned", "anchor") or name in randoms:
            continue
        own = {row["label"], row["same_widths_as"]} - {""}
        matched = next((n for n in randoms if first[n]["same_widths_as"] in own), None)
        if matched is not None:
            out.append(_contrast("criterion", name, matched, names))
        elif control is not None and row["kind"] == "pruned":
            out.append(_contrast("criterion", name, control, names,
                                 _same_budget(names[name], names[control]) or ASSUMED))
    if control is not None:  # (c) allocation: Random at a method's widths against Random at its own
        out += [_contrast("allocation", n, control, names) for n in randoms if first[n]["same_widths_as"]]
    if dense is not None:  # (b) the loss of pruning, against the unpruned model fine-tuned alike
        out += [_contrast("dense", n, dense, names) for n in here]
    return out


def contrasts(rows: list[dict[str, Any]], alpha: float = ALPHA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pre-declared paired contrasts on mAP, Holm-adjusted per family (one table at one budget).

    Returns (contrasts, families): one flat record per contrast (``a`` minus ``b``, ``kind`` criterion,
    allocation or dense; n pairs, mean difference, its t interval at LEVEL, Holm's p, level and interval,
    ``resolved``, ``resolvable``), and one per family (``m`` tested contrasts, ``smallest_resolvable``).
    """
    records, families = [], []
    for table, members in group_by(rows, lambda r: (r["scenario"], r["dataset"], r["pretrain"], r["finetune"])).items():
        names = group_by(members, lambda r: r["name"])
        dense = next((n for n, runs in names.items() if runs[0]["kind"] == "dense"), None)
        compared = [n for n, runs in names.items() if runs[0]["kind"] in COMPARED]
        for budget in dict.fromkeys(names[n][0]["budget"] for n in compared):
            family = _family(names, [n for n in compared if names[n][0]["budget"] == budget], dense)
            if not family:
                continue
            adjusted, smallest = holm_family([c["test"] for c in family], alpha)
            keys = dict(zip(("scenario", "dataset", "pretrain", "finetune"), table), budget=budget)
            for c, adj in zip(family, adjusted):
                t = c.pop("test")
                records.append({**keys, **c, **asdict(t), "df": t.df, **{  # holm_p, ..., resolved, resolvable
                    ("" if k.startswith("resol") else "holm_") + k: v for k, v in asdict(adj).items()}})
            families.append({**keys, "alpha": alpha, "m": sum(a.p is not None for a in adjusted),
                             "pairs": max(r["n"] for r in records[-len(family):]),
                             "smallest_resolvable": smallest})
    return records, families


def _contrast_lines(heading: str, family: dict[str, Any], members: list[dict[str, Any]]) -> list[str]:
    """One family's contrasts in results.md: a table and the smallest difference it could resolve."""
    title = f"### {heading}, budget {family['budget']}: paired contrasts (mAP)"
    if all(c["n"] < 2 for c in members if not c["note"].startswith("not compared")):
        return [title, "", f"Needs ≥ 2 paired runs: this run has {family['pairs']} per contrast.", ""]
    table = []
    for c in members:
        n = str(c["n"]) + (f" ({c['unpaired']} unpaired)" if c["unpaired"] else "")
        interval = (c["note"] if c["note"].startswith("not compared") else "needs ≥ 2 paired runs" if c["n"] < 2
                    else "no spread in the differences" if c["p"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]")
        holm = ("–" if c["holm_p"] is None
                else f"[{c['holm_low']:+.2f}, {c['holm_high']:+.2f}] at {100 * c['holm_level']:.4g}%")
        p = "–" if c["holm_p"] is None else "< 0.001" if c["holm_p"] < 0.001 else f"{c['holm_p']:.3f}"
        table.append([c["contrast"] + (" †" if c["note"] == ASSUMED else ""), n,
                      "–" if c["mean"] is None else f"{c['mean']:+.2f}", interval, holm, p,
                      "–" if c["holm_p"] is None else "yes" if c["resolved"] else "no"])
    lines = [title, "", markdown_table(["Contrast", "n pairs", "mean difference", f"{100 * LEVEL:.0f}% t interval",
                                "Holm-adjusted interval", "Holm p", "resolved"], table), ""]
    if any(c["note"] == ASSUMED for c in members):
        lines += ["† against Random at its own widths (same budget): the criterion's effect only if the method "
                  "allocates its widths as Random does; otherwise criterion and allocation together.", ""]
    if family["smallest_resolvable"] is not None:
        lines += [f"Smallest difference this run could resolve at budget {family['budget']}: "
                  f"{family['smallest_resolvable']:.2f} mAP (half-width of the "
                  f"{100 * (1 - family['alpha'] / family['m']):.4g}% t interval, Holm's strictest step over "
                  f"{family['m']} contrasts, at the observed spread of the tightest contrast).", ""]
    return lines


def families_of(contrast: tuple[list[dict[str, Any]], list[dict[str, Any]]], heading: str,
                 **table: str) -> list[str]:
    """The contrast sections of one results table (families whose keys match ``table``)."""
    records, families = contrast
    lines = []
    for family in families:
        if all(family[k] == v for k, v in table.items()):
            keys = ("scenario", "dataset", "pretrain", "finetune", "budget")
            members = [c for c in records if all(c[k] == family[k] for k in keys)]
            lines += _contrast_lines(heading.format(**family), family, members)
    return lines
