"""Watch and WatchCallback: the over-epochs strips from any loop; training left bit-identical."""

import copy
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.data import from_user_data
from camlens.explain import ExplainPlan
from camlens.watch import Watch, WatchConfig, WatchError


def tiny() -> nn.Module:
    """Batch norm (its running stats move in train mode) and dropout (it draws from the RNG in
    train mode): a Watch that leaves the wrong mode or consumes the RNG changes the weights."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(48, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return x[:32], y[:32], x[32:], y[32:]


def train(make_watch=None, epochs=3, snapshots=None, between=True):
    """A plain loop drawing from torch, numpy and Python's RNGs; the watch is called between
    backward() and step() of each epoch's last batch (the strictest place), or after it."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x, y, _, _ = data()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    watch = make_watch(model) if make_watch else None
    model.train()  # once, as many loops do: a watch that leaves eval mode shows
    for epoch in range(1, epochs + 1):
        order = torch.randperm(32)
        for start in range(0, 32, 8):
            idx = order[start : start + 8]
            images = x[idx] + torch.from_numpy(np.random.normal(0, 0.02, (8, 3, 8, 8))).float()
            if random.random() < 0.5:
                images = images.flip(3)
            loss = F.cross_entropy(model(images), y[idx])
            loss.backward()
            if watch is not None and start == 24 and between:
                watch.epoch(epoch)
            opt.step()
            opt.zero_grad()
        if watch is not None and not between:
            watch.epoch(epoch)
        if snapshots is not None:
            snapshots[epoch] = copy.deepcopy(model.state_dict())
    return model, watch


@pytest.mark.layout
def test_training_is_bit_identical_with_and_without_the_watch(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    _, _, tx, ty = data()
    plain, _ = train()
    writer = SummaryWriter(str(tmp_path / "tb"))
    watched, watch = train(
        lambda m: Watch(m, (tx, ty), tmp_path, every=1, classes=3, logger=writer)
    )
    # exact by construction: both trainings run the same ops on the same batches in this
    # process; a watch that moved the RNG, a BN statistic or a weight would break it
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert len(watch.kept) == 3
    state = torch.get_rng_state()
    watch.finish()
    assert watched.training and torch.equal(torch.get_rng_state(), state)


def test_the_strips_are_the_final_mistakes_at_each_kept_epoch(tmp_path):
    _, _, tx, ty = data()
    snapshots = {}
    model, watch = train(
        lambda m: Watch(m, (tx, ty), tmp_path, every=2, classes=3, strips=5),
        snapshots=snapshots,
        between=False,
    )
    files = watch.finish()
    assert sorted(p.name for p in files.values()) == ["over-epochs.json", "over-epochs.png"]
    assert (tmp_path / "epochs" / "epoch-002.safetensors").is_file()
    got = json.loads(files["over-epochs.json"].read_text())
    assert got["epochs"] == [2, 3] and got["method"] == "gradcam" and got["layer"] == "5"
    model.eval()
    with torch.no_grad():
        final = model(tx).softmax(1)
    wrong = (final.argmax(1) != ty).nonzero().flatten()
    assert len(got["images"]) == min(5, len(wrong))
    early = tiny()  # epoch 2's weights as kept: fp16
    early.load_state_dict({k: v.half().to(v.dtype) for k, v in snapshots[2].items()})
    early.eval()
    with torch.no_grad():
        then = early(tx).softmax(1)
    for row in got["images"]:
        i, pred = row["index"], int(row["pred"])
        assert int(row["label"]) == int(ty[i]) and pred == int(final[i].argmax())
        assert row["pred_prob"][-1] == pytest.approx(float(final[i, pred]), abs=1e-4)
        assert row["label_prob"][0] == pytest.approx(float(then[i, int(ty[i])]), abs=1e-3)
        assert row["pred_prob"][0] == pytest.approx(float(then[i, pred]), abs=1e-3)


def test_normalised_test_data_is_fed_normalised_and_shown_plain(tmp_path):
    _, _, tx, ty = data()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (tx - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.manual_seed(1)
    model = tiny().eval()
    user_data = from_user_data(normalised, ty, classes=3, mean=mean, std=std)
    with Watch(model, user_data, tmp_path, every=1, plan=ExplainPlan(layers=("3",))) as watch:
        watch.epoch(1)
    got = json.loads((tmp_path / "over-epochs.json").read_text())
    assert got["layer"] == "model.3"
    with torch.no_grad():
        probs = model(normalised).softmax(1)
    for row in got["images"]:
        i = row["index"]
        assert int(row["pred"]) == int(probs[i].argmax())
        assert row["pred_prob"][0] == pytest.approx(float(probs[i].max()), abs=1e-4)


def test_cards_and_strips_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    _, _, tx, ty = data()
    writer = SummaryWriter(str(tmp_path / "tb"))
    model, watch = train(lambda m: Watch(m, (tx, ty), tmp_path, every=2, classes=3, logger=writer))
    watch.finish()
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"camlens/cards", "camlens/over-epochs"}
    assert [e.step for e in events.Images("camlens/cards")] == [2]
    assert events.Images("camlens/over-epochs")[0].step == 3


def test_bad_settings_are_one_line(tmp_path):
    _, _, tx, ty = data()
    model = tiny()
    for kwargs, message in [
        ({"every": 0}, "every must be >= 1"),
        ({"cards": -1}, "cards must be 0"),
        ({"plan": ExplainPlan(methods=("gradcam", "layercam"))}, "compares one method's maps"),
        ({"logger": object()}, "pass a TensorBoard SummaryWriter or a W&B run"),
    ]:
        with pytest.raises(WatchError, match=message):
            Watch(model, (tx, ty), tmp_path, classes=3, **kwargs)
    with pytest.raises(Exception, match="no layer named 'nope'"):
        Watch(model, (tx, ty), tmp_path, classes=3, plan=ExplainPlan(layers=("nope",)))
    with pytest.raises(WatchError, match=r"call watch.epoch\(n\)"):
        Watch(model, (tx, ty), tmp_path, classes=3).finish()


@pytest.mark.layout
def test_lightning_callback_leaves_training_bit_identical(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from camlens.watch import WatchCallback

    x, y, tx, ty = data()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny()

        def training_step(self, batch, _):
            images, labels = batch
            return F.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)

    def fit(callbacks):
        pl.seed_everything(0, verbose=False)
        module = Module()
        loader = torch.utils.data.DataLoader(
            list(zip(x, y, strict=True)), batch_size=8, shuffle=True
        )
        trainer = pl.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
            callbacks=callbacks,
        )
        trainer.fit(module, loader)
        return module

    plain = fit([])
    watched = fit([WatchCallback((tx, ty), tmp_path, every=1, module="model", classes=3)])
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    got = json.loads((tmp_path / "over-epochs.json").read_text())
    assert got["epochs"] == [1, 2, 3]


def test_cards_and_strips_reach_a_wandb_run_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, _, tx, ty = data()
    run = wandb.init(  # mode named: an earlier test's wandb settings may outlive its env
        project="camlens-test",
        dir=str(tmp_path),
        mode="offline",
        settings=wandb.Settings(console="off"),
    )
    try:
        model, watch = train(
            lambda m: Watch(m, (tx, ty), tmp_path, every=2, classes=3, logger=run), epochs=2
        )
        watch.finish()
    finally:
        run.finish()
    media = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "wandb").rglob("*.png"))
    assert len(media) == 2 and [m for m in media if "cards" in m], media  # cards, strips


def test_the_maps_are_made_by_the_plan_and_the_old_settings_still_answer(tmp_path):
    """A Watch's method, layer and batch sizes are its plan's fields (one home, as every job);
    camlens 0.1's method=, layer=, batch_size= and limit= map onto them, with a warning."""
    _, _, tx, ty = data()
    plan = ExplainPlan(methods=("layercam",), layers=("3",), cam_batch_size=4, eval_batch_size=4)
    with Watch(tiny(), (tx, ty), tmp_path / "new", every=1, classes=3, strips=3, plan=plan) as w:
        w.epoch(1)
    got = json.loads((tmp_path / "new" / "over-epochs.json").read_text())
    assert (got["method"], got["layer"], len(got["images"])) == ("layercam", "3", 3)
    assert w.plan.cam_batch_size == 4 and w.data.batch_size == 4
    with pytest.warns(DeprecationWarning, match="limit is now strips=, and method, layer and"):
        old = WatchConfig.of(1, method="layercam", layer="3", batch_size=4, limit=3)
    assert old == WatchConfig(every=1, strips=3, plan=plan)
