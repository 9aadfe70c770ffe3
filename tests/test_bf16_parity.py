"""bf16 autocast against fp32 on real images: features agree (cosine >= 0.999), ResNet-18/50, unpruned and pruned.

Runs the library's own path: :func:`~reid_prune.evaluation.extract_features` at the
precision ``auto`` picks (bf16 on this CPU) in the channels-last layout ``auto`` picks, against
the same call in fp32. Skips on a CPU without native bf16 (auto is fp32 there) and without
``../shared/data``; the same check runs on CUDA when a GPU is present (``-m cuda``).

What makes the test fair. No trained weights can be downloaded here, and a random-init
ResNet is a poor stand-in as it comes:

* with BatchNorm's initial statistics (mean 0, variance 1) in eval mode, every image maps to
  nearly the same feature (mean cosine between images 0.999 for ResNet-50): parity would hold
  whatever bf16 did;
* with statistics calibrated on real images, the random net is chaotic: it amplifies a small
  perturbation layer after layer. Rounding only the *weights* to bf16, with fp32 arithmetic,
  already moves ResNet-50's pooled feature to cosine 0.996 (after the BNNeck: 0.92). That is a
  property of random weights, not of bf16 arithmetic; a trained network is not chaotic.

So the nets are put in the regime trained ResNets work in: BatchNorm statistics calibrated on
real training images (64, in train mode, cumulative average), and the last BatchNorm scale of
every residual branch set to 0.2 (small, as ``zero_init_residual``, used for ResNet-50 by the
CUHK03 bench, starts it at 0), so that a block refines the residual stream instead of doubling
a perturbation. The test checks that premise as well: the fp32 features of different images are
not collapsed (mean cosine between images < 0.99), so agreement at 0.999 says something.

The compared feature is the pooled one (``before_neck``, the retrieval feature of
``configs/cuhk03_market_resnet18_cpu.yaml``). The BNNeck of an untrained net, calibrated, divides
by the small spread of its pooled features and magnifies rounding along directions a trained
net uses for identity (measured under this set-up: ResNet-50 0.9988 after the neck, 0.99994
before it). The end-to-end check on trained models is the CUHK03 parity run in docs/results.md
(mAP from bf16 features within 0.5 of fp32's).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import reid_prune
from conftest import shared_data
from reid_prune import build_model
from reid_prune.data import build_dataset, build_eval_loader, build_transforms
from reid_prune.evaluation import extract_features
from reid_prune.precision import ComputeSettings, cpu_bf16_flags, cpu_has_native_bf16

SIZE = (128, 64)
BRANCH_SCALE = 0.2
CALIBRATION_IMAGES = 64
PARITY_IMAGES = 32


@pytest.fixture(scope="module")
def real_images():
    """(calibration samples, parity samples) of real person crops from ../shared/data."""
    dataset = build_dataset("market_layout", shared_data("cuhk03_market"))
    step = max(1, len(dataset.train) // CALIBRATION_IMAGES)  # many identities, not the first few
    return dataset.train[::step][:CALIBRATION_IMAGES], dataset.query[:PARITY_IMAGES]


def _loader(samples):
    return build_eval_loader(samples, build_transforms(*SIZE, train=False), batch_size=32, workers=0)


def _trained_like(arch: str, pruned: bool, calibration) -> nn.Module:
    """A random-init net with small residual-branch scales and BatchNorm statistics calibrated on real images."""
    torch.manual_seed(0)
    model = build_model(arch, last_stride=1, retrieval_feature="before_neck")
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, (BasicBlock, Bottleneck)):
                (block.bn3 if isinstance(block, Bottleneck) else block.bn2).weight.fill_(BRANCH_SCALE)
    if pruned:
        model = reid_prune.prune(model.eval(), "haoli", target_macs=0.5, input_size=SIZE)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for images, *_ in _loader(calibration):
            model(images)
    return model.eval()


def _check_parity(arch: str, pruned: bool, device: str, samples) -> None:
    calibration, probe = samples
    model = _trained_like(arch, pruned, calibration)
    compute = ComputeSettings.resolve(device, "auto", "auto")
    assert compute.precision != "fp32" and compute.channels_last
    compute.place(model)
    options = {"device": compute.device, "channels_last": True, "progress": False}
    fp32, _, _ = extract_features(model, _loader(probe), precision="fp32", **options)
    low, _, _ = extract_features(model, _loader(probe), precision=compute.precision, **options)
    unit = F.normalize(fp32, dim=1)
    between_images = (unit @ unit.T)[~torch.eye(len(unit), dtype=torch.bool)].mean()
    assert between_images < 0.99, f"fp32 features collapsed (mean cosine {between_images:.4f}): the test is moot"
    cosine = F.cosine_similarity(fp32, low, dim=1)
    assert cosine.min() >= 0.999, (f"{compute.precision} vs fp32 cosine on {device}: min {cosine.min():.5f}, "
                                   f"mean {cosine.mean():.5f}")


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned50"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_bf16_features_match_fp32(real_images, arch, pruned):
    if not cpu_has_native_bf16():
        pytest.skip(f"no native bf16 on this CPU (bf16 flags in /proc/cpuinfo: {', '.join(cpu_bf16_flags()) or 'none'}; "
                    f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}; both are needed): "
                    "train.amp=auto keeps fp32 here, so there is no bf16 path to check")
    _check_parity(arch, pruned, "cpu", real_images)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here; scripts/gpu_check.sh runs this")
@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned50"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_gpu_autocast_features_match_fp32(real_images, arch, pruned):
    """The same check on CUDA, in what auto picks there (bf16 from Ampere, else fp16)."""
    _check_parity(arch, pruned, "cuda", real_images)
