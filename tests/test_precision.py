"""camlens.cam.precision: TF32 off inside maps, metrics and the counterfactual (the caller's
flags restored), fp16 maps refused in one line, and the policy's effect under tests/rounding's
TF32 emulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camlens.cam import create
from camlens.cam.precision import FP16_REFUSED, full_fp32
from camlens.metrics import sanity_check, score_maps
from camlens.metrics.counterfactual import counterfactual
from camlens.model import ResNet18

ROUNDING = Path(__file__).resolve().parent / "rounding"


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_on():
    """Both TF32 flags on, as a caller may leave them; the suite's own flags restored after."""
    saved = flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_full_fp32_turns_tf32_off_inside_and_restores_the_callers_flags(tf32_on):
    """Planted: the flags left off after the block (no restore): red."""
    with full_fp32():
        assert flags() == (False, False)
    assert flags() == (True, True)
    with pytest.raises(KeyError), full_fp32():
        raise KeyError("inside")
    assert flags() == (True, True)


def test_maps_metrics_sanity_and_counterfactual_run_with_tf32_off(tf32_on):
    """Every forward of the model inside a library call sees TF32 off. Planted: full_fp32
    taken off Engine.explain_many: red (the engine's forwards see TF32 on)."""
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=4).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(flags()))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2])
    with create("gradcam", model, "layer4") as cam:
        maps = cam(images, targets)
        assert seen and set(seen) == {(False, False)}
        seen.clear()
        score_maps(model, images, maps, targets, metrics=("deletion", "road"), steps=4)
    counterfactual(model, images, maps, targets, torch.tensor([0, 0]))
    sanity_check(model, images, targets, lambda m: create("gradcam", m, "layer4"), ["linear"])
    assert seen and set(seen) == {(False, False)}
    assert flags() == (True, True)  # the caller's, after each call


def test_fp16_maps_are_refused_in_one_line():
    model = ResNet18(num_classes=10, width=4)
    with pytest.raises(ValueError) as caught:
        create("gradcam", model, "layer4", precision="fp16")
    assert str(caught.value) == FP16_REFUSED and "\n" not in FP16_REFUSED
    create("gradcam", model, "layer4", precision="bf16").close()  # bf16: fp32's range


CHILD = """
import torch
from camlens.cam import create
from camlens.model import ResNet18

torch.manual_seed(0)
model = ResNet18(num_classes=10, width=8).eval()
with torch.no_grad():
    model.linear.weight.copy_(torch.rand_like(model.linear.weight) - 0.2)
images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))

def maps(tf32, forced=False):
    torch.backends.cudnn.allow_tf32 = tf32
    hook = None
    if forced:  # a model that turns TF32 back on inside its forward: no policy, in effect
        def on(m, args):
            torch.backends.cudnn.allow_tf32 = True
        hook = model.register_forward_pre_hook(on)
    with create("gradcam", model, "layer3") as cam:
        out = cam(images)
    if hook is not None:
        hook.remove()
    return out

fp32, policy, left_on = maps(False), maps(True), maps(True, forced=True)
print(float((policy - fp32).abs().max()), float((left_on - fp32).abs().max()))
"""


def test_under_emulated_tf32_camlens_maps_equal_fp32_maps(tmp_path):
    """tests/rounding's TF32 emulation (CAMLENS_TEST_ROUNDING=tf32) with cuDNN's TF32 flag on,
    PyTorch's default: camlens's maps are the fp32 maps exactly, while the same engine with
    TF32 left on inside moves them. Planted: full_fp32 taken off explain_many: red."""
    env = {**os.environ, "PYTHONPATH": str(ROUNDING), "CAMLENS_TEST_ROUNDING": "tf32"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    policy, left_on = float(out[0]), float(out[1])
    assert policy == 0.0
    assert left_on > 1e-4  # the emulation is on and reaches the maps: the test can fail
