"""Nothing on disk is trusted by a latency budget: bad cached timings, a stale calibration, a bad cache folder,
a finished target that was missed, non-finite numbers in report.json, and targets echoed without rounding.

The table's timings are faked (tests/test_latency.py's formulas), so every expected number is computed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from torch import nn

from conftest import CACHE_VAR, TINY_RUN
from reid_prune.cli import main
from reid_prune.jobs import prune as prune_job
from reid_prune.pruners import latency, latency_feedback, latency_table
from reid_prune.pruners.budget import budget_problem
from reid_prune.pruners.cost import CostModel
from reid_prune.pruners.groups import ChannelGroup
from reid_prune.pruners.latency import LatencyCost
from test_latency import CPU, NETWORK_MS, SIZE, fake_timer, raw, tiny  # noqa: F401 (fake_timer: a fixture)
from test_latency_cli import _args, fake_table  # noqa: F401 (fake_table: a fixture)


def strict_json(path: Path) -> dict:
    """The file parsed as strict JSON: NaN, Infinity and -Infinity tokens are errors, as for most readers."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path.name} holds the non-JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def table_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "cache" / "latency").glob("*.json")
    return path


def edit_table(path: Path, ops=None, networks=None) -> None:
    """Rewrite the stored table: ``ops`` / ``networks`` map each stored value to the new one."""
    stored = json.loads(path.read_text())
    if ops:
        stored["ops"] = {k: ops(v) for k, v in stored["ops"].items()}
    if networks:
        stored["networks"] = {k: networks(v) for k, v in stored["networks"].items()}
    path.write_text(json.dumps(stored))  # json writes NaN and Infinity as bare tokens, as a damaged cache holds


def fresh_fraction(a: int, b: int) -> float:
    """The kept fraction a freshly timed table predicts for the tiny network: (layers + constant) / network."""
    return (raw(a, b) + NETWORK_MS - raw(16, 16)) / NETWORK_MS


# ------------------------------------------------------------------ item 1: cached values are checked

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0, "fast", None, True, 1e9])
def test_an_implausible_cached_op_is_timed_again_with_a_warning(fake_timer, tmp_path, bad):
    model, cost, _ = tiny()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    path = table_file(tmp_path)
    edit_table(path, ops=lambda v: bad)
    fake_timer.clear()
    with pytest.warns(UserWarning, match=r"42 stored timing\(s\) are no plausible time.*timed again"):
        again = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert len([c for c in fake_timer if c != "network"]) == 42  # every op measured again
    assert again.fraction({"a": 7, "b": 3}) == pytest.approx(fresh_fraction(7, 3), rel=1e-9)
    assert all(math.isfinite(v) for v in strict_json(path)["ops"].values())  # the file is healed


def test_a_bad_cached_calibration_is_timed_again(fake_timer, tmp_path):
    model, cost, _ = tiny()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    path = table_file(tmp_path)
    edit_table(path, networks=lambda v: float("nan"))
    with pytest.warns(UserWarning, match="no plausible time"):
        again = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert again.fraction({"a": 1, "b": 1}) == pytest.approx(fresh_fraction(1, 1), rel=1e-9)
    assert list(strict_json(path)["networks"].values()) == [NETWORK_MS]


# ------------------------------------------------------------------ item 2: the calibration is re-checked

def test_a_stale_calibration_is_detected_and_the_table_timed_again(fake_timer, tmp_path):
    model, cost, _ = tiny()
    first = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    path = table_file(tmp_path)
    edit_table(path, networks=lambda v: 2.7 * v)  # timed under load, or multiplied in a copied cache
    fake_timer.clear()
    with pytest.warns(UserWarning, match=r"takes 5 ms per image now, 13\.5 in the table \(x2\.70; tolerance x1\.25\)"):
        again = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    # The check, all 42 ops again, then the calibration again: ops and calibration under the same conditions.
    assert fake_timer[0] == fake_timer[-1] == "network" and len(fake_timer) == 44
    for counts in ({"a": 7, "b": 3}, {"a": 1, "b": 1}, {"a": 16, "b": 9}):
        assert again.fraction(counts) == pytest.approx(fresh_fraction(counts["a"], counts["b"]), rel=1e-9)
        assert again.fraction(counts) == pytest.approx(first.fraction(counts), rel=1e-9)
    assert list(strict_json(path)["networks"].values()) == [NETWORK_MS]


def test_a_calibration_within_the_tolerance_is_kept(fake_timer, tmp_path, recwarn):
    model, cost, _ = tiny()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    edit_table(table_file(tmp_path), networks=lambda v: 1.2 * v)  # run-to-run spread: not re-timed
    fake_timer.clear()
    again = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert fake_timer == ["network"] and not [w for w in recwarn if "latency table" in str(w.message)]
    stored = 1.2 * NETWORK_MS  # the cached calibration is used, so that a rerun plans the same widths
    assert again.fraction({"a": 7, "b": 3}) == pytest.approx((raw(7, 3) + stored - raw(16, 16)) / stored, rel=1e-9)


def test_a_cached_op_slower_than_the_whole_network_is_timed_again(fake_timer, tmp_path):
    model, cost, _ = tiny()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    path = table_file(tmp_path)
    stored = json.loads(path.read_text())
    key = next(k for k in stored["ops"] if k.endswith(": 16->16"))
    stored["ops"][key] *= 1000  # finite and positive, but 460 ms against a 5 ms network
    path.write_text(json.dumps(stored))
    fake_timer.clear()
    with pytest.warns(UserWarning, match=r"1 stored op\(s\) take more than 4 x the whole network"):
        again = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert fake_timer == ["network", key]
    assert again.fraction({"a": 12, "b": 14}) == pytest.approx(fresh_fraction(12, 14), rel=1e-9)


def test_a_missed_latency_target_warns_and_is_marked(fake_table, tmp_path, capsys, monkeypatch):
    # The after-surgery measurement says the pruned model keeps 0.9 of the latency: 0.3 above the target.
    monkeypatch.setattr(prune_job, "latency_ratios", lambda *a, batch_sizes, **k: {f"batch{b}": 0.9
                                                                                   for b in batch_sizes})
    out = tmp_path / "missed"
    assert main(_args(fake_table, out, "--target-latency", "0.6", "--set=prune.latency_feedback=0")) == 0
    err = capsys.readouterr().err
    assert "warning: latency target 0.6 missed: the pruned model keeps 0.900 of the latency" in err
    achieved = strict_json(out / "report.json")["achieved"]
    assert achieved["latency_target_missed"] is True and achieved["latency_tolerance"] == 0.05


def test_a_met_latency_target_says_nothing():
    with pytest.warns(UserWarning, match=r"latency target 0\.6125 missed.*0\.670"):
        assert latency_feedback.check_latency_target(0.6125, {"batch1": 0.64, "batch32": 0.7}) == {
            "latency_target_missed": True, "latency_tolerance": 0.05}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latency_feedback.check_latency_target(0.6, {"batch1": 0.64})["latency_target_missed"] is False


# ------------------------------------------------------------------ report.json is strict JSON

def test_a_nan_cache_gives_a_pruned_model_and_a_strict_report(fake_table, tmp_path, capsys):
    assert main(_args(fake_table, tmp_path / "first", "--target-latency", "0.6",
                      "--set=prune.latency_feedback=0")) == 0
    first = strict_json(tmp_path / "first" / "report.json")
    for path in (tmp_path / "latency").glob("*.json"):
        edit_table(path, ops=lambda v: float("nan"), networks=lambda v: float("nan"))
    capsys.readouterr()
    out = tmp_path / "second"
    assert main(_args(fake_table, out, "--target-latency", "0.6", "--set=prune.latency_feedback=0")) == 0
    assert "stored timing(s) are no plausible time" in capsys.readouterr().err
    report = strict_json(out / "report.json")
    # Timed again with the same (fake) timings: the same prediction and widths as before the damage.
    assert report["latency_budget"]["predicted"] == pytest.approx(first["latency_budget"]["predicted"], rel=1e-12)
    assert report["achieved"]["macs_ratio"] == pytest.approx(first["achieved"]["macs_ratio"], rel=1e-12)
    assert report["achieved"]["macs_ratio"] < 0.9  # pruned: the old code planned on NaN and kept every channel


def test_a_non_finite_number_stops_the_job_before_any_file(fake_table, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prune_job, "latency_ratios", lambda *a, batch_sizes, **k: {f"batch{b}": float("nan")
                                                                                   for b in batch_sizes})
    out = tmp_path / "nan"
    assert main(_args(fake_table, out, "--rate", "0.3")) == 2
    assert "report.json: 'achieved' holds a non-finite number" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ item 8: the cache folder, checked first

@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_a_bad_cache_folder_stops_prune_before_any_timing(where, tiny_run, tmp_path, capsys, monkeypatch):
    timed = []
    monkeypatch.setattr(latency_table, "time_op", lambda *a: timed.append(a) or 1.0)
    monkeypatch.setattr(latency, "measure_latency", lambda *a, batch_sizes, **k: timed.append(a) or {
        f"batch{b}": 1.0 for b in batch_sizes})
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    # root may write anywhere but in /proc: the one folder no test user can create anything in
    folder = {"a file": blocker, "under a file": blocker / "sub", "unwritable": Path("/proc/reid-prune-cache")}[where]
    monkeypatch.setenv(CACHE_VAR, str(folder))
    out = tmp_path / "out"
    assert main(_args(tiny_run, out, "--target-latency", "0.6")) == 2
    err = capsys.readouterr().err
    assert f"{CACHE_VAR}='{folder}'" in err and f"set {CACHE_VAR} to a folder you can write" in err
    assert "Errno" not in err and "Traceback" not in err and "Not a directory" not in err
    assert timed == [] and (not out.exists() or not any(out.iterdir()))


@pytest.mark.parametrize("folder", ["a file", "/proc/reid-prune-cache"])
def test_the_synthetic_data_cache_names_the_variable_without_errno_text(folder, tmp_path, monkeypatch):
    from reid_prune.config import load_config
    from reid_prune.jobs.wiring import prepare_dataset

    if folder == "a file":
        folder = tmp_path / "cache-file"
        folder.write_text("not a folder")
    monkeypatch.setenv(CACHE_VAR, str(folder))
    with pytest.raises(ValueError) as info:
        prepare_dataset(load_config(None, TINY_RUN).data, verbose=False)
    message = str(info.value)
    assert message.startswith(f"{CACHE_VAR}='{folder}': cannot keep the cache in '{folder}/synthetic-")
    assert message.endswith(f"set {CACHE_VAR} to a folder you can write")
    assert "No such file" not in message and "Errno" not in message


@pytest.mark.parametrize("unset", ["deleted", "empty"])
def test_the_cache_check_names_the_default_folder_when_the_variable_is_unset(unset, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("a file where the home folder should be")
    monkeypatch.delenv(CACHE_VAR, raising=False)
    if unset == "empty":  # an empty variable is no folder (it was the working directory)
        monkeypatch.setenv(CACHE_VAR, "")
    monkeypatch.setenv("HOME", str(home))
    from reid_prune.runtime import check_cache_dir  # here: the module imports on code without it too

    with pytest.raises(ValueError, match=rf"the cache folder '{home}/.cache/reid_prune' \({CACHE_VAR} is not set\): "
                                         rf"cannot keep the cache in '{home}/.cache/reid_prune/latency', since "
                                         rf"'{home}' is a file, not a folder"):
        check_cache_dir("latency")
    assert home.is_file()  # nothing created


def test_a_folder_in_place_of_a_table_stops_before_timing(fake_timer, tmp_path):
    model, cost, _ = tiny()
    setting = latency_table.LatencySetting.current(CPU, batch_size=1, input_size=SIZE)
    (tmp_path / "cache" / "latency" / f"{setting.key()}.json").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a folder, not a file: remove it"):
        LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert fake_timer == []


# ------------------------------------------------------------------ targets are echoed as given

def test_a_small_target_is_echoed_unrounded():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)).eval()
    groups = [ChannelGroup("a", "internal", ["0"], [], ["1"], 16, "s")]
    cost = CostModel(model, (8, 4), groups=groups)
    lowest = cost.macs({"a": 1}) / cost.macs()
    with pytest.raises(ValueError, match=rf"a MACs budget of 0\.00012345 cannot be met.*keeps {lowest:.3g} of"):
        budget_problem(groups, cost, target_macs=0.00012345)
