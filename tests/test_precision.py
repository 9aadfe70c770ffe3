"""Precision and memory format: bf16 detection, what auto resolves to, old configs, fp32 state, layouts."""

import copy
import warnings

import pytest
import torch
from torch import nn

from reid_prune import build_model, precision, save_checkpoint
from reid_prune.checkpoint import read_checkpoint
from reid_prune.config import Config, config_from_dict, load_config
from reid_prune.engine import Trainer
from reid_prune.engine.trainer import evaluate_with_config
from reid_prune.runtime import Runtime
from reid_prune.precision import (ComputeSettings, autocast_context, cpu_bf16_flags, model_memory_format,
                                  resolve_channels_last, resolve_precision)

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags(X86) == ["avx512_bf16"]
    assert cpu_bf16_flags(ARM) == ["bf16"]
    assert cpu_bf16_flags(OLD_X86) == []  # AVX-512 alone: bf16 is emulated, not native
    assert cpu_bf16_flags("") == []


@pytest.mark.parametrize("cpuinfo, capability, native", [
    (X86, "AVX512", True), (ARM, "SVE256", True), (OLD_X86, "AVX512", False), (X86, "DEFAULT", False),
])
def test_native_bf16_needs_the_flag_and_vector_kernels(tmp_path, monkeypatch, cpuinfo, capability, native):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is native
        assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    finally:
        precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_what_each_setting_means_on_the_cpu(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision(True, "cpu") == resolve_precision("auto", "cpu")  # the old default
    assert resolve_precision("off", "cpu") == resolve_precision(False, "cpu") == resolve_precision("fp32", "cpu")
    assert resolve_precision("off", "cpu") == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", "cpu") == "bf16"  # forced: honoured, with a warning when emulated
    assert bool(caught) is not native
    with pytest.raises(ValueError, match="fp16 autocast .* runs on CUDA only, not on cpu; use bf16, auto or off"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, off, bf16, fp16"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16")])
def test_auto_on_cuda_is_bf16_from_ampere_else_fp16(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("fp16", "cuda:0") == "fp16" and resolve_precision("off", "cuda") == "fp32"


def test_channels_last_auto():
    assert resolve_channels_last("auto", "cpu", "fp32") and resolve_channels_last("auto", "cpu", "bf16")
    assert resolve_channels_last("auto", "cuda", "bf16") and not resolve_channels_last("auto", "cuda", "fp32")
    assert not resolve_channels_last(False, "cpu", "bf16") and resolve_channels_last(True, "cuda", "fp32")
    with pytest.raises(ValueError, match="expected auto, true or false"):
        resolve_channels_last("yes", "cpu", "fp32")


def test_old_boolean_amp_in_yaml_and_checkpoints_maps_to_auto_or_off(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  amp: true\n  channels_last: false\n")
    cfg = load_config(path)
    assert cfg.train.amp == "auto" and cfg.train.channels_last is False  # an explicit false keeps NCHW
    assert load_config(None, ["train.amp=false"]).train.amp == "off"
    assert load_config(None, ["train.amp=off"]).train.amp == "off"  # YAML reads off as false: same meaning
    assert load_config(None, ["train.amp=fp32"]).train.amp == "off"
    assert load_config(None, ["train.amp=bf16"]).train.amp == "bf16"
    old = Config().to_dict()
    old["train"].update(amp=True, channels_last=False)  # what every config.yaml and checkpoint held before
    save_checkpoint(tmp_path / "old.pt", build_model("resnet18"), config=old)
    stored = read_checkpoint(tmp_path / "old.pt")["config"]  # weights_only=True
    assert config_from_dict(stored).train.amp == "auto"
    old["train"]["amp"] = False
    assert config_from_dict(old).train.amp == "off"
    assert Config().train.amp == "auto" and Config().train.channels_last == "auto"


def test_autocast_context_sets_the_compute_dtype():
    layer, x = nn.Linear(4, 3), torch.randn(2, 4)
    with autocast_context("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    for setting in ("fp32", "off"):
        with autocast_context("cpu", setting):
            assert layer(x).dtype == torch.float32


def test_trainer_autocasts_but_keeps_weights_and_optimiser_state_fp32():
    cfg = load_config(None, ["model.arch=resnet18", "loss.id_weight=1.0", "train.device=cpu", "train.amp=bf16"])
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4)
    conv_dtypes = []
    model.layer1[0].conv1.register_forward_hook(lambda m, i, out: conv_dtypes.append(out.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 forced on a CPU that may emulate it
        trainer = Trainer(cfg, model, model.build_config, train_loader=None, progress=False)
        trainer.train_step(torch.randn(8, 3, 64, 32), torch.arange(4).repeat_interleave(2))
    assert conv_dtypes == [torch.bfloat16]
    assert not trainer.scaler.is_enabled()  # loss scaling is for fp16 only
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    states = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    assert model_memory_format(trainer.model) == "channels_last"  # auto on the CPU


def test_memory_format_is_read_from_the_weights_and_place_restores_it():
    model = build_model("resnet50")  # 1x1 kernels are the same in both layouts and are skipped
    assert model_memory_format(model) == "contiguous"
    compute = ComputeSettings.resolve("cpu", "off", True)
    compute.place(model)
    assert model_memory_format(model) == "channels_last"
    # What pruning surgery does: a layer built anew, in NCHW, among channels-last ones.
    old = model.layer1[0].conv2
    model.layer1[0].conv2 = nn.Conv2d(old.in_channels, old.out_channels, 3, padding=1, bias=False)
    assert model_memory_format(model) == "mixed"
    compute.place(model)
    assert model_memory_format(model) == "channels_last"


def test_trainer_puts_layers_built_by_surgery_back_in_its_layout():
    cfg = load_config(None, ["model.arch=resnet18", "train.device=cpu", "train.amp=off", "train.channels_last=true"])
    model = build_model("resnet18")
    trainer = Trainer(cfg, model, model.build_config, train_loader=None, progress=False)
    old = model.layer2[0].conv2  # what a pruner's cut during training does, then rebuild_optimizer
    model.layer2[0].conv2 = nn.Conv2d(old.in_channels, old.out_channels // 2, 3, padding=1, bias=False)
    trainer.rebuild_optimizer()
    assert model_memory_format(trainer.model) == "channels_last"


def test_evaluation_places_the_model_in_the_configured_layout(monkeypatch):
    cfg = load_config(None, ["train.device=cpu", "train.amp=off"])
    model = build_model("resnet18").eval()
    seen = {}

    def fake_evaluate(net, query, gallery, **kwargs):
        seen.update(kwargs, layout=model_memory_format(net))
        return {}

    monkeypatch.setattr("reid_prune.engine.trainer.evaluate", fake_evaluate)
    evaluate_with_config(model, cfg, [], [], compute=Runtime.from_config(cfg.train).compute, progress=False)
    assert seen["layout"] == "channels_last" and seen["channels_last"] and seen["precision"] == "fp32"
    cfg = load_config(None, ["train.device=cpu", "train.amp=off", "train.channels_last=false"])
    evaluate_with_config(model, cfg, [], [], compute=Runtime.from_config(cfg.train).compute, progress=False)
    assert seen["layout"] == "contiguous" and not seen["channels_last"]


def test_channels_last_checkpoint_loads_with_weights_only(tmp_path):
    model = ComputeSettings.resolve("cpu", "off", True).place(build_model("resnet18").eval())
    reference = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    save_checkpoint(tmp_path / "cl.pt", model)
    state = torch.load(tmp_path / "cl.pt", weights_only=True)["state_dict"]
    loaded = build_model("resnet18").eval()
    loaded.load_state_dict(state)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))
