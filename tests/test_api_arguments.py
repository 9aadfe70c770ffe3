"""The library's front door checks its arguments before any work, as the command line checks its flags.

A mistyped keyword is named with the closest valid one; a value of the wrong type is a TypeError
naming the argument (``target_macs=True`` used to read as 1.0 and return an unpruned copy; a dict
for a config failed deep inside with an AttributeError); command-line bounds hold for calls too.
"""

from __future__ import annotations

import inspect
import pickle
import typing

import numpy as np
import pytest
import torch

import reid_prune
from reid_prune.cli import build_parser
from reid_prune.jobs.arguments import BOUNDS, check_call, check_value, type_hints

CALLABLES = [name for name in reid_prune.__all__ if callable(getattr(reid_prune, name))]


@pytest.fixture(scope="module")
def model():
    return reid_prune.build_model("resnet18").eval()


@pytest.fixture(scope="module")
def cfg():
    return reid_prune.load_config(None, ["model.arch=resnet18"])


def test_a_mistyped_keyword_is_named_with_the_closest_valid_one(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"^prune\(\): unknown argument 'target_mac'; did you mean 'target_macs'\?$"):
        reid_prune.prune(model, "fpgm", target_mac=0.5, input_size=(64, 32))
    # Names reach prune through **options too: the pruner's settings, the context's and the method's options.
    with pytest.raises(TypeError, match=r"unknown argument 'num_batchs'; did you mean 'num_batches'\?"):
        reid_prune.prune(model, "molchanov", target_macs=0.5, num_batchs=2)
    with pytest.raises(TypeError, match=r"unknown argument 'min_channel'; did you mean 'min_channels'\?"):
        reid_prune.get_pruner("haoli", rate=0.3, min_channel=4)
    with pytest.raises(TypeError, match=r"unknown argument 'sed'; did you mean 'seed'\?"):
        reid_prune.prune(model, "random", rate=0.3, sed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("call, error, message", [
    (lambda m, c: reid_prune.prune(m, "fpgm", target_macs=True), TypeError,
     "prune(): target_macs: expected a number or None, got True"),
    (lambda m, c: reid_prune.prune(m, "fpgm", target_macs="0.5"), TypeError,
     "prune(): target_macs: expected a number or None, got '0.5'"),
    (lambda m, c: reid_prune.prune(m, "fpgm", target_macs=0.5, input_size=128), TypeError,
     "prune(): input_size: expected a pair of integers, got 128"),
    (lambda m, c: reid_prune.prune(m, "fpgm", target_macs=0.5, round_to=2.5), TypeError,
     "prune(): round_to: expected an integer, got 2.5"),
    (lambda m, c: reid_prune.prune(m, "fpgm", target_macs=float("nan")), ValueError,
     "prune(): target_macs: expected a finite number, got nan"),
    (lambda m, c: reid_prune.prune("best.pt", "fpgm", rate=0.3), TypeError,
     "prune(): model: expected a torch.nn.Module (e.g. reid_prune.load_model(path)), got 'best.pt'"),
    (lambda m, c: reid_prune.prune(m, "random", rate=0.3, seed="1"), TypeError,
     "prune(): seed: expected an integer, got '1'"),
    (lambda m, c: reid_prune.evaluate_checkpoint({"model": {}}, "best.pt"), TypeError,
     "evaluate_checkpoint(): cfg: expected a Config (reid_prune.load_config(...)), got {'model': {}}"),
    (lambda m, c: reid_prune.evaluate_checkpoint(c, "best.pt", progres=False), TypeError,
     "evaluate_checkpoint(): unknown argument 'progres'; did you mean 'progress'?"),
    (lambda m, c: reid_prune.prune_checkpoint(c, "best.pt", outptu="runs/x"), TypeError,
     "prune_checkpoint(): unknown argument 'outptu'; did you mean 'output'?"),
    (lambda m, c: reid_prune.train(c, output=3), TypeError,
     "train(): output: expected a path (a string or os.PathLike) or None, got 3"),
    (lambda m, c: reid_prune.load_config(None, "train.epochs=3"), TypeError,
     "load_config(): overrides: expected a list of strings, got 'train.epochs=3'"),
    (lambda m, c: reid_prune.sensitivity_checkpoint(c, "best.pt", output="s", rates=0.5), TypeError,
     "sensitivity_checkpoint(): rates: expected a list of numbers, got 0.5"),
    (lambda m, c: reid_prune.sensitivity_checkpoint(c, "best.pt", output="s", seed=-1), ValueError,
     "sensitivity_checkpoint(): seed: must be >= 0, got -1"),
    (lambda m, c: reid_prune.visrank_checkpoint(c, "best.pt", output="v", topk=True), TypeError,
     "visrank_checkpoint(): topk: expected an integer, got True"),
    (lambda m, c: reid_prune.extract_checkpoint("best.pt", "crops", "f.npy", workers=-1), ValueError,
     "extract_checkpoint(): workers: must be >= 0, got -1"),
    (lambda m, c: reid_prune.export_checkpoint("best.pt", "m.onnx", tolerance=0.0), ValueError,
     "export_checkpoint(): tolerance: must be > 0, got 0.0"),
    (lambda m, c: reid_prune.build_model("resnet18", embeding_dim=128), TypeError,
     "build_model(): unknown argument 'embeding_dim'; did you mean 'embedding_dim'?"),
    (lambda m, c: reid_prune.save_checkpoint(m, "model.pt"), TypeError,
     "save_checkpoint(): path: expected a path (a string or os.PathLike), got a ReIDNet"),
])
def test_wrong_values_are_refused_up_front_naming_the_argument(model, cfg, tmp_path, monkeypatch, call, error,
                                                               message):
    monkeypatch.chdir(tmp_path)  # nothing may be written, and nothing is read: no file named here exists
    with pytest.raises(error) as caught:
        call(model, cfg)
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []


def test_good_calls_go_through_with_numpy_numbers_and_lists(model):
    small = reid_prune.prune(model, "random", target_macs=np.float64(0.5), input_size=[64, 32], seed=1,
                             scope="internal")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    check_call(reid_prune.sensitivity_checkpoint.__wrapped__, (reid_prune.load_config(None), "best.pt"),
               {"output": "s", "rates": np.array([0.25, 0.5]), "subset_ids": 0})


def test_every_public_function_is_checked_and_its_hints_resolve():
    for name in CALLABLES:
        function = getattr(reid_prune, name)
        assert function.__wrapped__ is not function and function.__module__ == "reid_prune", name
        hints = typing.get_type_hints(function.__wrapped__)  # unresolved hints would switch the type checks off
        params = inspect.signature(function.__wrapped__).parameters
        missing = [p for p, spec in params.items() if p not in hints and spec.kind is not spec.VAR_KEYWORD]
        assert missing == [], f"{name}: arguments without a type hint are not checked: {missing}"
        assert pickle.loads(pickle.dumps(function)) is function  # pickle finds the checked function by its name


COMMAND_OF = {"sensitivity_checkpoint": "sensitivity", "visrank_checkpoint": "visrank",
              "extract_checkpoint": "extract", "export_checkpoint": "export"}


@pytest.mark.parametrize("function, arg", [(f, a) for f, bounds in BOUNDS.items() for a in bounds])
def test_bounds_are_the_command_lines(function, arg, capsys):
    low, strict = BOUNDS[function][arg]
    refused = low if strict else low - 1
    flag = f"--{arg.replace('_', '-')}"
    with pytest.raises(SystemExit):
        build_parser().parse_args([COMMAND_OF[function], flag, str(refused)])
    assert f"argument {flag}: must be" in capsys.readouterr().err
    hint = type_hints(getattr(reid_prune, function).__wrapped__)[arg]
    with pytest.raises(ValueError, match=rf"^{function}\(\): {arg}: must be {'>' if strict else '>='} {low}, got"):
        check_value(function, arg, type(low)(refused), hint)
    # The boundary value itself (just above it when the bound is strict) passes both.
    accepted = low + (1 if strict else 0)
    check_value(function, arg, type(low)(accepted), hint)
    with pytest.raises(SystemExit):  # for want of the required flags, not for this one
        build_parser().parse_args([COMMAND_OF[function], flag, str(accepted)])
    assert f"argument {flag}" not in capsys.readouterr().err
