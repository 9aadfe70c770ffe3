"""The bench's statistics (reid_prune/bench/stats.py) and its paired contrasts (reid_prune/bench/tables.py),
against values worked out by hand.

The expected numbers do not come from scipy: Student's t with 1 and 2 degrees of freedom has closed forms.
df = 1 is the Cauchy distribution: quantile t_q = tan(pi (q - 1/2)), two-sided p = 1 - (2 / pi) atan|t|.
df = 2: CDF F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so quantile t_q = (2q - 1) / sqrt(2q (1 - q)) and two-sided
p = 1 - |t| / sqrt(2 + t^2). For a two-sided interval at level L, q = (1 + L) / 2. Values with df = 2:

    L        q          t_q = (2q - 1) / sqrt(2q(1 - q))
    0.95     0.975      0.95 / sqrt(0.04875)            = 4.302652729749462   (tables: 4.303)
    0.975    0.9875     0.975 / sqrt(0.0246875)         = 6.205346816570706   (tables: 6.205)
    0.98333  0.991667   0.98333 / sqrt(0.0165278)       = 7.648803937915553
    0.9875   0.99375    0.9875 / sqrt(0.012421875)      = 8.860200034654316
    0.99     0.995      0.99 / sqrt(0.00995)            = 9.924843200918287   (tables: 9.925)
"""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from reid_prune.bench.stats import holm, holm_family, holm_ranks, paired_difference, t_interval
from reid_prune.bench.contrasts import ASSUMED, contrasts, families_of

T2 = {0.95: 4.302652729749462, 0.975: 6.205346816570706, 1 - 0.05 / 3: 7.648803937915553,
      0.9875: 8.860200034654316, 0.99: 9.924843200918287}
REL = 1e-9


def test_t_interval_hand_cases():
    # [1, 2, 3]: mean 2, sd 1 (squares 1 + 0 + 1 over n - 1 = 2), se 1 / sqrt(3); t_{0.975, 2} = 4.302652729749462:
    # half-width 4.302652729749462 / sqrt(3) = 2.484137711750330.
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (low, high) == pytest.approx((2 - 2.484137711750330, 2 + 2.484137711750330), rel=REL)
    # [1, 3]: mean 2, sd sqrt(2), se 1; t_{0.975, 1} = tan(0.475 pi) = 12.706204736174696 (tables: 12.706).
    assert t_interval([1.0, 3.0]) == pytest.approx((2.0, 2 - 12.706204736174696, 2 + 12.706204736174696), rel=REL)
    # At 0.99 with df = 2: 9.924843200918287 / sqrt(3) = 5.730110893715001.
    assert t_interval([1.0, 2.0, 3.0], 0.99)[2] == pytest.approx(2 + 5.730110893715001, rel=REL)
    assert t_interval([5.0]) == (5.0, None, None)  # one value: no spread, no interval
    with pytest.raises(ValueError):
        t_interval([])
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], level=1.0)


def test_paired_difference_hand_case():
    # Keys 0-2 on both sides: differences 1, 2, 3; key 9 only in a, key 8 only in b: left out, counted.
    a = {0: 3.0, 1: 5.0, 2: 6.0, 9: 1.0}
    b = {0: 2.0, 1: 3.0, 2: 3.0, 8: 0.0}
    r = paired_difference(a, b)
    assert (r.n, r.unpaired, r.mean, r.sd, r.df) == (3, 2, 2.0, 1.0, 2)
    # t = 2 / (1 / sqrt(3)) = 2 sqrt(3) = 3.4641016151377544; p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14).
    assert r.t == pytest.approx(3.4641016151377544, rel=REL)
    assert r.p == pytest.approx(1 - math.sqrt(6 / 7), rel=REL) and r.p == pytest.approx(0.07417990022744858, rel=REL)
    assert (r.low, r.high) == pytest.approx((2 - 2.484137711750330, 2 + 2.484137711750330), rel=REL)
    assert r.interval(0.975) == pytest.approx((2 - T2[0.975] / math.sqrt(3), 2 + T2[0.975] / math.sqrt(3)), rel=REL)
    # The same p as scipy's paired t test on the paired values.
    assert r.p == pytest.approx(scipy_stats.ttest_rel([3.0, 5.0, 6.0], [2.0, 3.0, 3.0]).pvalue, rel=1e-9)
    # b - a: the same test, mirrored.
    m = paired_difference(b, a)
    assert (m.mean, m.t, m.low) == pytest.approx((-2.0, -r.t, -r.high), rel=REL) and m.p == pytest.approx(r.p)


def test_paired_difference_without_a_test():
    one = paired_difference({0: 3.0, 1: 4.0}, {0: 1.0})
    assert (one.n, one.unpaired, one.mean, one.sd, one.p, one.low, one.df) == (1, 1, 2.0, None, None, None, None)
    same = paired_difference({0: 3.0, 1: 4.0}, {0: 1.0, 1: 2.0})  # differences 2, 2: no spread to test against
    assert (same.n, same.mean, same.sd, same.t, same.p, same.low) == (2, 2.0, 0.0, None, None, None)
    assert not same.testable and same.half_width(0.95) is None
    none = paired_difference({0: 1.0}, {1: 1.0})
    assert (none.n, none.unpaired, none.mean) == (0, 2, None)


def test_holm_hand_example():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted ascending, times m - k + 1:
    #   0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04;
    # running maximum: 0.02, 0.03, 0.06, 0.06 (0.04 is raised to 0.06: monotone in the raw order).
    # Back in input order: [0.03, 0.06, 0.06, 0.02]. Without the running maximum the second would be 0.04.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    # Capped at 1: 0.6 x 2 = 1.2 -> 1; 0.7 x 1 = 0.7 -> max(1, 0.7) = 1.
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm_ranks([0.02, 0.01, 0.02]) == [2, 1, 3]  # ties keep their input order
    with pytest.raises(ValueError):
        holm([1.5])


def test_holm_family_levels_and_resolution():
    # Two contrasts, differences [1, 2, 3] (p = 0.0742) and [10, 11, 12] (mean 11, sd 1, t = 11 sqrt(3) = 19.0526,
    # p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(363 / 365) = 0.0027435). Ranked: the second first (level
    # 1 - 0.05 / 2 = 0.975), the first second (level 1 - 0.05 / 1 = 0.95). Holm p: 0.0027435 x 2 = 0.005487;
    # max(0.005487, 0.0742 x 1) = 0.0742. An untestable contrast (one pair) is outside the family: m = 2.
    small = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    large = paired_difference({0: 10.0, 1: 11.0, 2: 12.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    alone = paired_difference({0: 1.0}, {0: 0.0})
    (a, b, c), smallest = holm_family([small, alone, large])
    p_large = 1 - math.sqrt(363 / 365)
    assert large.p == pytest.approx(p_large, rel=REL)
    assert c.p == pytest.approx(2 * p_large, rel=REL) and c.level == pytest.approx(0.975)
    assert (c.low, c.high) == pytest.approx((11 - T2[0.975] / math.sqrt(3), 11 + T2[0.975] / math.sqrt(3)), rel=REL)
    assert c.resolved
    assert a.p == pytest.approx(1 - math.sqrt(6 / 7), rel=REL) and a.level == pytest.approx(0.95)
    assert a.low == pytest.approx(2 - 2.484137711750330, rel=REL) and not a.resolved
    assert b == type(b)() and not b.resolved  # untested
    # Strictest step 1 - 0.05 / 2 = 0.975, both sd 1 and n 3: 6.205346816570706 / sqrt(3) = 3.582658654962085.
    assert a.resolvable == c.resolvable == smallest == pytest.approx(3.582658654962085, rel=REL)
    assert holm_family([alone]) == ([type(b)()], None)



def test_holm_step_down_stops_at_the_first_step_it_cannot_pass():
    # Differences [2.25, 3.25, 4.25] (mean 3.25, sd 1, t^2 = 3 x 3.25^2 = 31.6875, p = 1 - sqrt(31.6875 / 33.6875)
    # = 0.030139) and [1.8, 2.8, 3.8] (t^2 = 3 x 2.8^2 = 23.52, p = 1 - sqrt(23.52 / 25.52) = 0.039984).
    # Step 1: 0.030139 x 2 = 0.060278 >= 0.05: Holm stops; neither is resolved. The second's own step
    # (0.039984 x 1 < 0.05) would pass and its 95% interval excludes 0, but the running maximum raises its
    # adjusted p to 0.060278.
    zero = {0: 0.0, 1: 0.0, 2: 0.0}
    first = paired_difference({0: 2.25, 1: 3.25, 2: 4.25}, zero)
    second = paired_difference({0: 1.8, 1: 2.8, 2: 3.8}, zero)
    assert (first.p, second.p) == pytest.approx((1 - math.sqrt(31.6875 / 33.6875), 1 - math.sqrt(23.52 / 25.52)),
                                                rel=REL)
    (a, b), _ = holm_family([first, second])
    assert a.p == b.p == pytest.approx(2 * (1 - math.sqrt(31.6875 / 33.6875)), rel=REL)
    assert (a.level, b.level) == pytest.approx((0.975, 0.95))
    assert b.low > 0 and a.low < 0  # the second's interval at its step excludes 0, the first's does not
    assert not a.resolved and not b.resolved

def _row(name, kind, mAP, seed, method="", same="", budget="0.5", kept=0.5):
    return {"scenario": "in_domain", "dataset": "a", "pretrain": "a", "finetune": "a", "name": name, "label": name,
            "kind": kind, "method": method, "budget": "" if kind == "dense" else budget, "seed": seed,
            "finetune_seed": None, "mAP": mAP, "macs_kept": 1.0 if kind == "dense" else kept,
            "same_widths_as": same}


RHW = "Random (HaoLi widths)"
DENSE = "Dense (fine-tuned)"
# Three source seeds at budget 0.5: Random, HaoLi, Random at HaoLi's widths, Dense (mAP per seed 0, 1, 2).
MAPS = {"Random": ("random", "", [20.0, 21.0, 20.0]), "HaoLi": ("haoli", "", [23.0, 24.0, 28.0]),
        RHW: ("random", "HaoLi", [22.0, 22.0, 25.0])}
ROWS = [_row(name, "pruned", maps[s], s, method, same) for name, (method, same, maps) in MAPS.items()
        for s in range(3)] + [_row(DENSE, "dense", 30.0 + s, s) for s in range(3)]


def test_contrasts_of_one_family_by_hand():
    records, families = contrasts(ROWS)
    got = {c["contrast"]: c for c in records}
    # Pre-declared, in order: criterion (HaoLi against Random at its widths), allocation (Random at HaoLi's widths
    # against Random), each pruned row against Dense. Random itself has no criterion contrast.
    assert list(got) == [f"HaoLi − {RHW}", f"{RHW} − Random", f"Random − {DENSE}", f"HaoLi − {DENSE}",
                         f"{RHW} − {DENSE}"]
    assert [c["kind"] for c in records] == ["criterion", "allocation", "dense", "dense", "dense"]
    # By hand (df = 2, p = 1 - |t| / sqrt(2 + t^2), se = sd / sqrt(3)); Holm multiplier m - rank + 1, m = 5:
    #   contrast     differences     mean    sd          t           raw p                    rank  Holm p
    #   HaoLi - RHW  1, 2, 3         2       1           2 sqrt 3    1 - sqrt(6/7)  = 0.07418   4    x2 = 0.14836
    #   RHW - Rand   2, 1, 5         8/3     sqrt(13/3)  8/sqrt 13   1 - 8/sqrt 90  = 0.15673   5    x1 = 0.15673
    #   Rand - D     -10, -10, -12   -32/3   2/sqrt 3    -16         1 - 16/sqrt 258 = 0.003884 1    x5 = 0.019418
    #   HaoLi - D    -7, -7, -4      -6      sqrt 3      -6          1 - 6/sqrt 38  = 0.02667   3    x3 = 0.08001
    #   RHW - D      -8, -9, -7      -8      1           -8 sqrt 3   1 - sqrt(96/97) = 0.005168 2    x4 = 0.020672
    # The Holm p are already increasing with the raw p (no running maximum needed here).
    # Holm levels 1 - 0.05 / (m - rank + 1): 0.975, 0.95, 0.99, 0.98333, 0.9875.
    expected = {
        f"HaoLi − {RHW}": (3, 2.0, 1.0, 1 - math.sqrt(6 / 7), 2 * (1 - math.sqrt(6 / 7)), 0.975, 1.0),
        f"{RHW} − Random": (3, 8 / 3, math.sqrt(13 / 3), 1 - 8 / math.sqrt(90), 1 - 8 / math.sqrt(90), 0.95,
                            math.sqrt(13 / 3)),
        f"Random − {DENSE}": (3, -32 / 3, 2 / math.sqrt(3), 1 - 16 / math.sqrt(258), 5 * (1 - 16 / math.sqrt(258)),
                              0.99, 2 / math.sqrt(3)),
        f"HaoLi − {DENSE}": (3, -6.0, math.sqrt(3), 1 - 6 / math.sqrt(38), 3 * (1 - 6 / math.sqrt(38)), 1 - 0.05 / 3,
                             math.sqrt(3)),
        f"{RHW} − {DENSE}": (3, -8.0, 1.0, 1 - math.sqrt(96 / 97), 4 * (1 - math.sqrt(96 / 97)), 0.9875, 1.0),
    }
    for name, (n, mean, sd, p, holm_p, level, sd_again) in expected.items():
        c = got[name]
        assert (c["n"], c["unpaired"], c["df"]) == (n, 0, 2)
        assert (c["mean"], c["sd"], c["p"], c["holm_p"], c["holm_level"]) == pytest.approx(
            (mean, sd, p, holm_p, level), rel=REL), name
        se = sd_again / math.sqrt(3)
        assert (c["low"], c["high"]) == pytest.approx((mean - T2[0.95] * se, mean + T2[0.95] * se), rel=REL), name
        assert (c["holm_low"], c["holm_high"]) == pytest.approx(
            (mean - T2[level] * se, mean + T2[level] * se), rel=REL), name
        assert c["resolvable"] == pytest.approx(T2[0.99] * se, rel=REL), name
    # Random - D: [-17.283, -4.050] at 99%; RHW - D: [-13.115, -2.885] at 98.75%: resolved. HaoLi - D: its own 95%
    # interval [-10.30, -1.70] excludes 0 (raw p 0.027), but its Holm step (98.33%: [-13.65, +1.65]) does not.
    assert {name for name, c in got.items() if c["resolved"]} == {f"Random − {DENSE}", f"{RHW} − {DENSE}"}
    assert got[f"HaoLi − {DENSE}"]["high"] < 0 < got[f"HaoLi − {DENSE}"]["holm_high"]
    # The smallest resolvable difference: sd 1 at the strictest step, 9.924843200918287 / sqrt(3) = 5.7301.
    (family,) = families
    assert (family["budget"], family["m"], family["pairs"]) == ("0.5", 5, 3)
    assert family["smallest_resolvable"] == pytest.approx(5.730110893715001, rel=REL)


def test_contrasts_in_results_md():
    lines = families_of(contrasts(ROWS), "{dataset}", scenario="in_domain", dataset="a")
    assert lines[0] == "### a, budget 0.5: paired contrasts (mAP)"
    text = "\n".join(lines)
    # Random - Dense: -32/3 = -10.67; 95%: -10.667 -+ 4.3027 x 2/3 = [-13.54, -7.80]; 99%: -+ 9.9248 x 2/3 =
    # [-17.28, -4.05]; Holm p 0.019418 -> 0.019.
    assert f"| Random − {DENSE} | 3 | -10.67 | [-13.54, -7.80] | [-17.28, -4.05] at 99% | 0.019 | yes |" in text
    # HaoLi - Dense: -6 -+ 4.3027 = [-10.30, -1.70]; at 98.33%: -6 -+ 7.6488 = [-13.65, +1.65]; 0.08001 -> 0.080.
    assert f"| HaoLi − {DENSE} | 3 | -6.00 | [-10.30, -1.70] | [-13.65, +1.65] at 98.33% | 0.080 | no |" in text
    assert f"| HaoLi − {RHW} | 3 | +2.00 | [-0.48, +4.48] | [-1.58, +5.58] at 97.5% | 0.148 | no |" in text
    assert ("Smallest difference this run could resolve at budget 0.5: 5.73 mAP (half-width of the 99% t interval, "
            "Holm's strictest step over 5 contrasts") in text
    assert "†" not in text  # every criterion contrast here is at the method's own widths


def test_criterion_against_random_at_its_own_widths_needs_the_same_budget():
    # Budget 0.3: FPGM (kept 0.30, 0.31, 0.29) against Random (0.30): within 0.02, compared, marked as assuming
    # Random's allocation; AFP+PRC (kept 0.40) is at another budget: listed, not tested; an anchor and scratch have
    # no Random at their widths: against Dense only.
    rows = [_row(DENSE, "dense", 30.0 + s, s) for s in range(3)]
    for s in range(3):
        rows += [_row("Random", "pruned", (14.0, 15.0, 14.0)[s], s, "random", budget="0.3", kept=0.3),
                 _row("FPGM", "pruned", (15.0, 17.0, 17.0)[s], s, "fpgm", budget="0.3", kept=(0.30, 0.31, 0.29)[s]),
                 _row("AFP+PRC", "pruned", 20.0, s, "afp_prc", budget="0.3", kept=0.4),
                 _row("TP L1", "anchor", 10.0 + s, s, "torch_pruning_l1", budget="0.3", kept=0.3),
                 _row("Scratch", "scratch", 12.0 + 2 * s, s, "scratch", budget="0.3", kept=0.3)]
    records, (family,) = contrasts(rows)
    got = {c["contrast"]: c for c in records}
    assert list(got) == ["FPGM − Random", "AFP+PRC − Random"] + [f"{n} − {DENSE}" for n in
                                                                  ("Random", "FPGM", "AFP+PRC", "TP L1", "Scratch")]
    fpgm = got["FPGM − Random"]  # differences 1, 2, 3: as by hand above
    assert fpgm["note"] == ASSUMED and fpgm["holm_p"] is not None
    assert (fpgm["mean"], fpgm["p"]) == pytest.approx((2.0, 1 - math.sqrt(6 / 7)), rel=REL)
    afp = got["AFP+PRC − Random"]
    assert afp["note"] == "not compared: other budget (0.400 of the MACs kept, Random 0.300)"
    assert (afp["n"], afp["p"], afp["holm_p"], afp["resolved"]) == (3, None, None, False)
    # TP L1 - Dense: -20, -20, -20, no spread: not tested. Tested: FPGM - Random, and Random (-16, -16, -18),
    # FPGM (-15, -14, -15), AFP+PRC (-10, -11, -12) and Scratch (-18, -17, -16) against Dense: m = 5.
    assert got[f"TP L1 − {DENSE}"]["p"] is None and got[f"TP L1 − {DENSE}"]["mean"] == -20.0
    assert family["m"] == 5
    text = "\n".join(families_of((records, [family]), "{dataset}", scenario="in_domain", dataset="a"))
    assert "| FPGM − Random † | 3 | +2.00 | [-0.48, +4.48] |" in text
    assert ("| AFP+PRC − Random | 3 | – | not compared: other budget (0.400 of the MACs kept, Random 0.300) "
            "| – | – | – |") in text
    assert f"| TP L1 − {DENSE} | 3 | -20.00 | no spread in the differences | – | – | – |" in text
    assert "† against Random at its own widths" in text
    # FPGM at 0.33 of the MACs at one seed: more than 0.02 from Random's 0.30, no longer compared.
    next(r for r in rows if r["name"] == "FPGM" and r["seed"] == 1)["macs_kept"] = 0.33
    assert contrasts(rows)[0][0]["note"] == "not compared: other budget (0.307 of the MACs kept, Random 0.300)"


def test_one_pair_per_contrast_says_so_instead_of_numbers():
    rows = [r for r in ROWS if r["seed"] == 0]
    records, (family,) = contrasts(rows)
    assert all(c["n"] == 1 and c["p"] is None and not c["resolved"] for c in records)
    assert (family["m"], family["smallest_resolvable"]) == (0, None)
    lines = families_of((records, [family]), "{dataset}", scenario="in_domain", dataset="a")
    assert lines == ["### a, budget 0.5: paired contrasts (mAP)", "",
                     "Needs ≥ 2 paired runs: this run has 1 per contrast.", ""]
    # A missing run is left out of its pairs and counted.
    partial = [r for r in ROWS if not (r["name"] == "HaoLi" and r["seed"] == 2)]
    got = {c["contrast"]: c for c in contrasts(partial)[0]}
    assert (got[f"HaoLi − {RHW}"]["n"], got[f"HaoLi − {RHW}"]["unpaired"]) == (2, 1)
    assert got[f"HaoLi − {RHW}"]["mean"] == pytest.approx(1.5)  # differences 1, 2
