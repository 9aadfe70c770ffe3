"""Fixes from a new user's review of import, re-ranking and bench-from-checkpoint (review 24).

Each test builds its own tiny files (synthetic bench keys, random tensors) and checks a refusal's exit
status and line, or a number against one computed here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from test_interop import bot_state, fastreid_state

import reid_prune
from reid_prune.bench import plan_bench
from reid_prune.bench.schema import parse_bench
from reid_prune.bench.tables import markdown_report, result_rows, summarize, written
from reid_prune.cli import main
from reid_prune.config import ConfigError, load_config

BENCH = {
    "name": "r24", "input_size": [64, 32],
    "base": {"data": {"dataset": "synthetic", "workers": 0}, "model": {"pretrained": "none"},
             "train": {"device": "cpu", "max_batches": 1}, "eval": {"latency": False}},
    "datasets": {"a": {"synthetic": {"ids": 8, "test_ids": 4, "images_per_camera": 2, "seed": 0}}},
    "baselines": [{"arch": "resnet18"}], "prune_arch": "resnet18", "methods": ["haoli"], "budgets": [0.5],
}


def test_an_empty_checkpoint_path_is_refused_not_trained(tmp_path: Path) -> None:
    raw = {**BENCH, "baselines": [{"checkpoint": ""}], "prune_arch": "resnet50"}
    with pytest.raises(ConfigError, match=r"baselines\[0\]\.checkpoint: an empty path; give the checkpoint file"):
        parse_bench(raw, "r24.yaml", tmp_path)
    # A written bench.yaml holds checkpoint "" beside the epochs of a trained baseline: it still reads back.
    bench = parse_bench({**BENCH, "baselines": [{"arch": "resnet18", "epochs": 2, "checkpoint": ""}]}, "r24.yaml",
                        tmp_path)
    assert (bench.baselines[0].arch, bench.baselines[0].epochs) == ("resnet18", 2)


def _cli_error(capsys, *argv: str) -> str:
    """Run reid-prune with ``argv``, expect exit 2; its one error line."""
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_import_refuses_an_existing_output(tmp_path: Path, capsys) -> None:
    theirs, out = tmp_path / "bot18.pth", tmp_path / "mine.pt"
    torch.save(bot_state("resnet18"), theirs)
    out.write_bytes(b"keep me")
    line = _cli_error(capsys, "import", "--from", "bot", str(theirs), "--output", str(out))
    assert line.endswith(f"output (--output) {str(out)!r} exists; choose another output or delete it")
    assert out.read_bytes() == b"keep me"
    with pytest.raises(FileExistsError, match="exists; choose another"):
        reid_prune.import_checkpoint(theirs, source="bot", output=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot18.pth", "mine.pt"]


def test_a_folder_is_named_a_folder_with_the_file_inside(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    torch.save(bot_state("resnet18"), folder / "model.pth.tar-60")
    line = _cli_error(capsys, "import", "--from", "bot", str(folder), "--output", str(tmp_path / "out.pt"))
    assert line.endswith(f"checkpoint {str(folder)!r} is a folder, not a file; pass the checkpoint inside it, "
                         f"'{folder / 'model.pth.tar-60'}'")
    # A bench baseline's checkpoint that is a run folder: its best.pt is suggested.
    (tmp_path / "run").mkdir()
    reid_prune.save_checkpoint(tmp_path / "run" / "best.pt", reid_prune.build_model("resnet18"))
    with pytest.raises(ConfigError, match=r"baselines\[0\]\.checkpoint: checkpoint '\S+/run' is a folder, not a file; "
                                          r"pass the checkpoint inside it, '\S+/run/best.pt'"):
        parse_bench({**BENCH, "baselines": [{"checkpoint": "run"}]}, "r24.yaml", tmp_path)


def test_the_suggested_pixel_statistics_flag_pastes_into_a_shell(tmp_path: Path) -> None:
    state = fastreid_state("resnet18", pixel_stats=True)
    state["pixel_mean"] = torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1) * 255
    torch.save(state, tmp_path / "fr.pth")
    notes = reid_prune.import_checkpoint(tmp_path / "fr.pth", source="fastreid").notes
    note = next(n for n in notes if n.startswith("pixel_mean"))
    words = shlex.split(note.partition("evaluate with ")[2])
    assert words[0] == "--set" and len(words) == 2  # one shell word, as the config reads it
    cfg = load_config(None, [words[1]])
    assert list(cfg.data.transforms.mean) == [0.5, 0.25, 0.125]


def test_an_optimizer_file_is_named_as_such_with_the_model_file(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # a momentum buffer: 'state' holds tensors per parameter, as BoT's saved optimizer does
    path = tmp_path / "resnet50_optimizer_120.pth"
    torch.save(optimizer.state_dict(), path)
    with pytest.raises(ValueError, match=r"holds an optimizer's state \(state, param_groups\), not the model's "
                                         r"weights; .* import that file, 'resnet50_model_120.pth'"):
        reid_prune.import_checkpoint(path, source="bot")


def test_wording_of_python_arguments_osnet_and_repeated_checkpoint_architectures(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pth"  # options are checked before the file is read
    with pytest.raises(ValueError, match=r"^source \(--from\): expected one of torchreid, fastreid, bot, got 'BOT'$"):
        reid_prune.import_checkpoint(missing, source="BOT")
    with pytest.raises(ValueError, match=r"^last_stride \(--last-stride\): expected 1 or 2, got 3$"):
        reid_prune.import_checkpoint(missing, source="bot", last_stride=3)
    # An OSNet's stem key: "its backbone is an OSNet", not "has an OSNet backbone".
    torch.save({"conv1.conv.weight": torch.ones(2), **bot_state("resnet18")}, tmp_path / "osnet.pth")
    with pytest.raises(ValueError, match=r"cannot be imported: its backbone is an OSNet \(conv1\.conv\.weight\); "):
        reid_prune.import_checkpoint(tmp_path / "osnet.pth", source="torchreid")
    for name in ("a.pt", "b.pt"):
        reid_prune.save_checkpoint(tmp_path / name, reid_prune.build_model("resnet18", pretrained="none"))
    raw = {**BENCH, "baselines": [{"checkpoint": "a.pt"}, {"checkpoint": "b.pt", "label": "B"}]}
    with pytest.raises(ConfigError, match=r"bench key baselines: more than one baseline is a resnet18, one of them a "
                                          r"checkpoint; a bench identifies each source model by its architecture .*: "
                                          r"keep one baseline per architecture"):
        parse_bench(raw, "r24.yaml", tmp_path)


def test_the_tables_round_scores_once_from_the_full_value(tmp_path: Path) -> None:
    bench = parse_bench(dict(BENCH), "r24.yaml", tmp_path)
    plan = plan_bench(bench)
    results, scores = {}, {}
    for cell in plan.cells:
        results[cell.key] = {"params": 10, "macs": 100 if cell.kind in ("train", "dense") else 50, "wall_seconds": 1.0}
        # 17.1548 is 17.2 to one decimal; rounded to 17.15 first, it printed 17.1 (17.15 is 17.149999... in binary).
        metrics = {"mAP": 17.1548, "rank1": 40.0, "rank5": 50.0, "mINP": 5.0}
        scores[(cell.key, "a")] = {"metrics": metrics, "pruned_metrics": None, "scored_by": "test"}
    rows = result_rows(plan, "resnet18", results, scores, {})
    groups = summarize(rows)
    md = markdown_report(bench, plan, [written(r) for r in rows], groups, command="", plots={}, final=False,
                         pending=0)
    table = [line for line in md.splitlines() if line.startswith("| ResNet18")]
    assert table and all("| 17.2 |" in line and "17.1 " not in line for line in table)
    assert {written(r)["mAP"] for r in rows} == {17.15}  # the files keep two decimals
