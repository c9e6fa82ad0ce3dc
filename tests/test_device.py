"""Every tensor on its input's device, every random draw on a CPU generator then moved: the bugs
a GPU shows, caught on the CPU.

`torch.set_default_device("meta")` stands in for a notebook's `set_default_device("cuda")`: the
model and inputs are built on the CPU first, then the library runs with meta as the default.
A tensor the library makes without `device=` lands on meta, which holds no data: mixing it with
the CPU inputs, or reading it, raises, where CUDA would raise on a CPU generator passed to a
CUDA draw, or on CPU and CUDA tensors mixed. Each call's result must also equal the same call
made with the CPU as the default: nothing drew from another stream.

A static check over src/ keeps the rules where no test runs: a random draw names its device,
a generator is a CPU one, and `.numpy()` comes after `.cpu()`.
"""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from camlens.cam import METHODS, TOKEN_METHODS, candidate_layers, create
from camlens.compare.grid import grid_test
from camlens.compare.table import select_subsets
from camlens.data import Split
from camlens.metrics import baseline_engine, baseline_maps, sanity_check, score_maps
from camlens.metrics.counterfactual import counterfactual
from camlens.metrics.grid import GridConfig, grid_baseline_maps, grid_maps, make_grids
from camlens.metrics.stats import bootstrap_ci, paired_bootstrap
from camlens.model import ResNet18
from camlens.train.loop import default_sampler
from conftest import CUDA_SWITCH
from test_grid import COLOURS, Colours  # the colour model whose grid maps are known

SRC = Path(__file__).resolve().parents[1] / "src" / "camlens"


@contextmanager
def default_meta():
    """The library's calls with meta as the default device (the inputs already on the CPU)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def on_meta_and_cpu(call):
    """`call()` with meta as the default device; its result must equal the CPU default's."""
    with default_meta():
        got = call()
    want = call()
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        assert a.device.type == "cpu"
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    return got


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if hasattr(x, "__dataclass_fields__"):
        return [t for f in x.__dataclass_fields__ for t in _tensors(getattr(x, f))]
    return []


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ResNet18(num_classes=10, width=4).eval()
    with torch.no_grad():  # class weights that give maps that are not all zero
        m.linear.weight.copy_(torch.rand_like(m.linear.weight) - 0.2)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# rollout reads a transformer's attention: it refuses this CNN's layers (tests/test_cam_rollout.py)
@pytest.mark.parametrize("method", sorted(set(METHODS) - TOKEN_METHODS))
def test_every_method_follows_its_inputs_device(method, model, images):
    """Planted: SmoothGrad-CAM++'s noise drawn without device="cpu": red (smoothgradcam++),
    as SS-CAM's (sscam)."""
    layer = "layer4" if method == "cam" else "layer3"
    labels = torch.tensor([1, 2, 3])

    def run():
        with create(method, model, layer, batch_size=2) as cam:
            return cam.explain_pair(images, labels)

    pair = on_meta_and_cpu(run)
    assert pair.pred.maps.shape == (3, 32, 32)


def test_metrics_baselines_and_sanity_follow_their_inputs_device(model, images):
    """Score every metric, each baseline, a short sanity cascade, bootstrap intervals."""
    targets = torch.tensor([1, 2, 3])

    def scores():
        with create("gradcam", model, "layer4") as cam:
            maps = cam(images, targets)
            return score_maps(model, images, maps, targets, engine=cam, steps=4, batch_size=8)

    on_meta_and_cpu(scores)
    for kind in ("random", "random-pixel", "centre"):
        on_meta_and_cpu(lambda kind=kind: baseline_maps(images.shape, kind, device="cpu"))

    def baseline_scores():
        engine = baseline_engine("random", torch.Generator().manual_seed(1))
        maps = baseline_maps(images.shape, "random", torch.Generator().manual_seed(0), "cpu")
        return score_maps(model, images, maps, targets, engine=engine, steps=4)

    on_meta_and_cpu(baseline_scores)

    def sanity():
        return sanity_check(
            model, images, targets, lambda m: create("gradcam", m, "layer4"), ["linear", "layer4"]
        )

    on_meta_and_cpu(sanity)
    values = torch.rand(12, generator=torch.Generator().manual_seed(2))
    with default_meta():
        interval = bootstrap_ci(values, n_boot=64)
    assert interval == bootstrap_ci(values, n_boot=64)
    on_meta_and_cpu(lambda: paired_bootstrap(values.view(2, 6) - 0.5, n_boot=64))


def test_counterfactual_candidates_subsets_and_sampler_follow_their_inputs_device(model, images):
    """Planted: candidate_layers's dummy images drawn without device="cpu": red."""
    preds, labels = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 1])
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    on_meta_and_cpu(lambda: counterfactual(model, images, maps, preds, labels))
    seeds = torch.tensor([4, 5, 6])
    on_meta_and_cpu(lambda: counterfactual(model, images, maps, preds, labels, seeds=seeds))
    with default_meta():
        names = [c.name for c in candidate_layers(model, 32)]
    assert names == [c.name for c in candidate_layers(model, 32)] and "layer4" in names
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(4))
    truth, pool = torch.arange(20) % 10, torch.arange(30)
    on_meta_and_cpu(lambda: select_subsets(logits, truth, 5))
    on_meta_and_cpu(lambda: default_sampler(pool, 0)(3))


# class c's image is one flat colour; feature c of the model fires only on that colour


def test_the_grid_test_follows_its_inputs_device():
    """Planted: make_grids's permutations drawn without device="cpu": red."""
    model = Colours()
    labels = torch.arange(5).repeat(12)  # (N,)
    images = COLOURS[labels][:, :, None, None].expand(-1, -1, 8, 8).clone()  # (N, 3, 8, 8)
    logits = model(images).detach()
    config = GridConfig(count=12, min_grids=4)

    def maps_of(method, layer, grids):
        with create("gradcam", model, "relu") as cam:
            native, inputs = grid_maps(cam, grids)
        return native, inputs

    def run():
        grids = make_grids(model, images, labels, logits, config)
        random = grid_baseline_maps("random", grids, (8, 8), torch.Generator().manual_seed(0))
        split = Split(images, labels)
        result = grid_test(model, split, logits, [("gradcam", "relu")], maps_of, config)
        return grids.images, random, [r["mean"] for r in result["rows"]]

    got = on_meta_and_cpu(run)
    assert got[2] and all(m == m for m in got[2])


def watched() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small classifier and 16 test images of 3 classes for a Watch."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    g = torch.Generator().manual_seed(5)
    return model, torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_a_watch_epoch_follows_its_inputs_device(tmp_path):
    """Watch.epoch and finish with meta as the default device: the strips of the CPU's."""
    from camlens.watch import Watch

    model, x, y = watched()
    files = {}
    for name, context in (("meta", default_meta), ("cpu", _nothing)):
        with context():
            watch = Watch(model, (x, y), tmp_path / name, every=1, classes=3, strips=4)
            watch.epoch(1)
            files[name] = watch.finish()
    meta, cpu = (files[k]["over-epochs.json"].read_text() for k in ("meta", "cpu"))
    assert meta == cpu


@contextmanager
def _nothing():
    yield


# -- a loader on another device ---------------------------------------------------------------


class Elsewhere(torch.Tensor):
    """A CPU tensor that plays one on another device (a CUDA loader's batches): `.numpy()`
    refuses it, an op mixing it with a plain tensor of more than one element refuses, and only
    `.cpu()` (or `.to("cpu")`) gives a plain tensor back. Ops on it stay Elsewhere."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "numpy":
            raise TypeError("can't convert cuda:0 device type tensor to numpy (Elsewhere)")
        if name == "cpu" or (name == "to" and _to_cpu(args, kwargs)):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor).clone()
        flat = list(_flatten(args)) + list(_flatten(kwargs.values()))
        mine = [t for t in flat if isinstance(t, Elsewhere)]
        plain = [t for t in flat if type(t) is torch.Tensor and t.numel() > 1]
        if mine and plain and name not in ("__get__", "__set__", "device", "shape"):
            raise RuntimeError(f"{name}: tensors on two devices (Elsewhere and the CPU)")
        return super().__torch_function__(func, types, args, kwargs)


def _to_cpu(args, kwargs) -> bool:
    wanted = [a for a in args[1:] if isinstance(a, (str, torch.device))]
    wanted += [kwargs[k] for k in ("device",) if k in kwargs]
    return any(torch.device(d).type == "cpu" for d in wanted)


def _flatten(items):
    for x in items:
        if isinstance(x, (list, tuple)):
            yield from _flatten(x)
        else:
            yield x


def test_elsewhere_plays_another_device():
    """The stand-in itself: refuses numpy and mixing, until moved with .cpu()."""
    x = torch.rand(4, 3).as_subclass(Elsewhere)
    with pytest.raises(TypeError):
        (x * 2).numpy()
    with pytest.raises(RuntimeError):
        x + torch.rand(4, 3)
    assert type(x.cpu()) is torch.Tensor and type(x.to("cpu")) is torch.Tensor
    assert isinstance(x[0].to(torch.uint8), Elsewhere)


def test_a_watch_with_a_loader_on_another_device_moves_its_images_to_the_cpu(tmp_path):
    """A loader whose batches live on another device (a fast CIFAR loop's CUDA tensors).
    Planted: Watch._images without .cpu(): red (the images reach the overlay and .numpy())."""
    from camlens.watch import Watch

    model, x, y = watched()

    def collate(items):  # batches as a GPU loop keeps them: on its device
        images, labels = default_collate(items)
        return images.as_subclass(Elsewhere), labels.as_subclass(Elsewhere)

    loader = DataLoader(TensorDataset(x, y), batch_size=8, collate_fn=collate)

    class Model(nn.Module):  # the model on "that device": it takes its inputs as they come
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, images):
            return self.net(images.as_subclass(torch.Tensor))

    watch = Watch(Model(), loader, tmp_path, every=1, classes=3, strips=4)
    watch.epoch(1)
    files = watch.finish()
    assert files["over-epochs.png"].stat().st_size > 0


# -- the rules, read from the source --------------------------------------------------------

DRAWS = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like"}
DRAWS |= {"normal", "bernoulli", "multinomial", "poisson"}
# sites in files other sessions own (train/loop.py: until data/augment draws on the CPU and
# moves); drop each entry once its file is fixed
NUMPY_KNOWN = {
    "report/render.py": "_encode_all's overlay batches: report/ is another session's, add .cpu()",
    "data/adapt.py": "pixels moved to the CPU on the line above; data/ is another session's",
}
GENERATOR_KNOWN: dict[str, str] = {}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text())


def test_every_random_draw_names_its_device_and_every_generator_is_a_cpu_one():
    """Planted: device="cpu" dropped from SmoothGrad-CAM++'s noise: red, at its line."""
    bad = []
    for name, tree in _sources():
        for call in _calls(tree):
            attr = call.func.attr
            keys = {k.arg for k in call.keywords}
            is_torch = isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"
            if is_torch and attr in DRAWS and "device" not in keys and not attr.endswith("_like"):
                bad.append(f"{name}:{call.lineno}: torch.{attr} without device=")
            if (
                is_torch
                and attr == "Generator"
                and (call.args or keys)
                and name not in (GENERATOR_KNOWN)
            ):
                bad.append(f"{name}:{call.lineno}: a generator on a device (draw on the CPU)")
            inplace = ("normal_", "uniform_", "bernoulli_", "random_", "exponential_")
            if attr in inplace and "generator" not in keys:
                bad.append(f"{name}:{call.lineno}: .{attr} draws from the tensor's device stream")
    assert not bad, "\n".join(bad)


def test_every_numpy_call_comes_after_cpu():
    """Planted: epochs.py's strips tiles without .cpu(): red."""
    bad = []
    for name, tree in _sources():
        if name in NUMPY_KNOWN:
            continue
        for call in _calls(tree):
            if call.func.attr != "numpy":
                continue
            chain, node = [], call.func.value
            while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
                if isinstance(node, ast.Attribute):
                    chain.append(node.attr)
                node = node.func if isinstance(node, ast.Call) else node.value
            if "cpu" not in chain:
                bad.append(f"{name}:{call.lineno}: .numpy() without .cpu() before it")
    assert not bad, "\n".join(bad)


# -- device and launch: the suite pinned to the CPU, torchrun's ranks on their GPUs ---------


def test_the_suite_and_its_subprocesses_see_no_gpu():
    """Planted: conftest's pytest_configure emptied: red (CUDA_VISIBLE_DEVICES unset)."""
    import subprocess
    import sys

    if os.environ.get(CUDA_SWITCH):
        pytest.skip("CAMLENS_TEST_CUDA=1: the CUDA tests' run leaves the GPUs visible")
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    code = "import os, torch; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"
    code += "; print(torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["''", "False"]
    from camlens.cli.commands import pick_device

    assert pick_device("auto").type == "cpu"


@pytest.fixture
def torchrun_rank(monkeypatch):
    """Rank 1 of 2 on this machine, as torchrun leaves it, with CUDA and the process group
    mocked: returns (set GPU count, what start() asked for)."""
    from torch import distributed as dist

    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    asked: dict = {}
    gpus = {"count": 2}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus["count"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: asked.update(gpu=torch.device(d)))
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "is_gloo_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: asked.update(backend=name))
    return gpus, asked


@pytest.mark.parametrize(
    ("device", "backend", "want", "want_backend"),
    [
        ("cuda", "auto", "cuda:1", "nccl"),
        ("cuda:0", "auto", "cuda:1", "nccl"),  # not every rank on GPU 0: NCCL refuses that
        ("cuda:0", "nccl", "cuda:1", "nccl"),
        ("cuda", "gloo", "cuda:1", "gloo"),
        ("cuda:0", "gloo", "cuda:0", "gloo"),  # gloo lets ranks share a GPU, as asked
        ("cpu", "auto", "cpu", "gloo"),
    ],
)
def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank(
    torchrun_rank, device, backend, want, want_backend
):
    """Planted: start() keeping an explicit cuda:0 with NCCL (main's rule): red."""
    from camlens import distributed

    _, asked = torchrun_rank
    assert distributed.start(torch.device(device), backend) == torch.device(want)
    assert asked["backend"] == want_backend
    assert asked.get("gpu") == (torch.device(want) if want != "cpu" else None)


def test_fewer_gpus_than_ranks_is_one_line(torchrun_rank):
    from camlens import distributed

    gpus, asked = torchrun_rank
    gpus["count"] = 1
    with pytest.raises(distributed.DistributedError) as caught:
        distributed.start(torch.device("cuda"), "auto")
    message = str(caught.value)
    assert "\n" not in message and "2 processes" in message and "1 CUDA GPU" in message
    assert "backend" not in asked  # refused before any process group
    assert distributed.start(torch.device("cuda:0"), "gloo") == torch.device("cuda:0")


def test_sync_bn_in_one_process_says_it_does_nothing_and_the_recipe_says_false(
    tmp_path, tiny_folder, capsys
):
    """Planted: the one-process --sync-bn dropped silently, as on main: red."""
    import json

    from camlens.data import load_dataset
    from camlens.train import TrainConfig, train

    data = load_dataset(tiny_folder, progress=False)
    config = TrainConfig(epochs=1, width=8, batch_size=8, eval_batch_size=32, sync_bn=True)
    train(config, data, tmp_path / "run", progress=False)
    said = capsys.readouterr().out.splitlines()
    assert [line for line in said if "--sync-bn" in line] == [
        "--sync-bn does nothing in one process (it shares batch statistics between processes)"
    ]
    recipe = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["recipe"]
    assert recipe["sync_bn"] is False


def test_auto_precision_picks_bf16_only_where_a_gpu_computes_it_natively(monkeypatch):
    """A T4 or V100 "supports" bf16 by emulation only. Planted: fast_bf16 asking
    torch.cuda.is_bf16_supported() with its default (emulation counts): red."""
    from camlens.evaluate import fast_bf16, resolve_precision

    def supported(including_emulation=True):
        return including_emulation  # emulated only: a pre-Ampere GPU

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    cuda = torch.device("cuda", 0)
    assert fast_bf16(cuda) is False and resolve_precision("auto", cuda) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) == "bf16"  # an A100, H100: native


# -- on a GPU (CAMLENS_TEST_CUDA=1 -k cuda; benchmarks/gpu_session.sh runs them) -------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_as_the_default_device_runs_every_method_metric_and_check(model, images):
    """A notebook's torch.set_default_device("cuda"), the model and images built after it:
    every method, the metrics, a sanity step, the counterfactual and the samplers run, and
    agree with the CPU's (TF32 off inside: fp32 on both, to the order of sums)."""
    targets = torch.tensor([1, 2, 3])
    want = {}
    for method in sorted(METHODS):
        layer = "layer4" if method == "cam" else "layer3"
        with create(method, model, layer) as cam:
            want[method] = cam(images, targets)
    maps = want["gradcam"]
    cpu_scores = score_maps(model, images, maps, targets, steps=4, metrics=("deletion", "road"))
    sampled = default_sampler(torch.arange(30), 0)(3)
    torch.set_default_device("cuda")
    try:
        gpu_model = ResNet18(num_classes=10, width=4).eval()  # on the default device
        gpu_model.load_state_dict(model.state_dict())
        x, t = images.cuda(), targets.cuda()
        for method in sorted(METHODS):
            layer = "layer4" if method == "cam" else "layer3"
            with create(method, gpu_model, layer) as cam:
                got = cam(x, t)
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), want[method], atol=1e-3, rtol=0, msg=method)
        scores = score_maps(gpu_model, x, maps.cuda(), t, steps=4, metrics=("deletion", "road"))
        for name, v in cpu_scores.values.items():
            torch.testing.assert_close(scores.values[name].cpu(), v, atol=2e-3, rtol=0)
        counterfactual(gpu_model, x, maps.cuda() * 2 - 1, t, torch.tensor([0, 0, 1]))
        sanity_check(gpu_model, x, t, lambda m: create("gradcam", m, "layer4"), ["linear"])
        assert "layer4" in [c.name for c in candidate_layers(gpu_model, 32)]
        assert torch.equal(default_sampler(torch.arange(30), 0)(3).cpu(), sampled)
    finally:
        torch.set_default_device(None)


@needs_cuda
def test_cuda_maps_with_tf32_left_on_by_the_caller_are_the_fp32_maps(model, images):
    """PyTorch's default on CUDA is cuDNN TF32 on: camlens's maps must not see it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    gpu_model, x = ResNet18(num_classes=10, width=4).cuda().eval(), images.cuda()
    gpu_model.load_state_dict(model.state_dict())
    maps = []
    try:
        for flag in (False, True):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = flag
            with create("gradcam", gpu_model, "layer3") as cam:
                maps.append(cam(x))
        assert torch.equal(maps[0], maps[1])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@needs_cuda
def test_cuda_watch_with_a_cuda_loader_and_model(tmp_path):
    """A fast CIFAR loop's data kept on the GPU: the strips are drawn on the CPU."""
    from camlens.watch import Watch

    model, x, y = watched()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    watch = Watch(model, loader, tmp_path, every=1, classes=3, strips=4)
    watch.epoch(1)
    assert watch.finish()["over-epochs.png"].stat().st_size > 0


# -- the GPU session fits one device call ----------------------------------------------------


def test_the_gpu_session_fits_one_device_call():
    """`gpu_session.sh --dry`: at most 2,000 characters of command, under 64 MiB sent, at most
    8 files back and 540 s of commands. Planted: a seventh step of 60 s (570 s): red."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh", "--dry"], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    said = out.stdout
    command = re.search(r"^command \((\d+) characters, at most 2000\): (.*)$", said, re.M)
    assert command and int(command[1]) == len(command[2]) <= 2000
    assert int(re.search(r"^sent: (\d+) bytes", said, re.M)[1]) < 64 * 2**20
    assert int(re.search(r"^time: (\d+) s of commands", said, re.M)[1]) <= 540
    files = re.findall(r"^  \$OUT/([A-Za-z0-9._-]+)$", said, re.M)
    assert 1 <= len(files) <= 8 and int(re.search(r"^files: (\d+)", said, re.M)[1]) == len(files)
    assert "carry: .gpu/carry" in said


def test_training_augmentation_draws_on_the_cpu_whatever_the_images_device():
    """A run draws the same crops, flips and holes on any device: the CPU generator's draws,
    moved to the images (before: drawn on the images' device, which a CPU generator refuses,
    and a device generator is another stream)."""
    from camlens.data import augment
    from camlens.train.steps import seeded

    images = torch.rand(6, 3, 8, 8)
    here, there = seeded(0, 1), seeded(0, 1)
    on_cpu = augment(images, here, True, True, True)
    elsewhere = augment(images.to("meta"), there, True, True, True)
    assert elsewhere.device.type == "meta" and elsewhere.shape == on_cpu.shape
    # the same draws were taken from the CPU stream for either device
    assert torch.equal(here.get_state(), there.get_state())
    assert not torch.equal(here.get_state(), seeded(0, 1).get_state())
