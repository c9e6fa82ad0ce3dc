"""Batched inference, accuracy, the confusion matrix, and the list of misclassified images.

`misclassified.csv` is the hand-over to the CAM side: `read_mistakes(path, split)` turns it back
into `Mistakes` with the images attached, so explaining needs no second pass over the test set.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from camlens.atomic import atomic_write_bytes, atomic_write_files
from camlens.data import DataError, Split
from camlens.data.store import ImageStore, rows_of
from camlens.distributed import gather, shard_rows
from camlens.plots import plot_confusion

__all__ = [
    "predict",
    "confusion_matrix",
    "Mistakes",
    "find_mistakes",
    "Evaluation",
    "evaluate",
    "write_evaluation",
    "read_mistakes",
    "write_mistakes",
    "autocast",
    "fast_bf16",
    "native_bf16",
    "resolve_precision",
]


def fast_bf16(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 autocast is the faster choice on `device`.

    On a GPU: where it computes bf16 natively (`native_bf16`). On the CPU: only with AMX (the
    `amx_bf16` flag), where the bare ResNet18 step ran at 192 img/s in bf16 against 102 in
    fp32; on a Xeon with AVX512-BF16 but no AMX it ran at 50 against 69
    (`benchmarks/train_speed.py --formats`).
    """
    if device.type == "cuda":
        return native_bf16(device)
    if device.type != "cpu":
        return False
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:  # not Linux: no way to tell here, and fp32 is never wrong
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA `device` computes bf16 in hardware (compute capability 8.0, Ampere, or
    later). `torch.cuda.is_bf16_supported()` alone counts emulation, so a T4 or V100 would
    train "auto" in an emulated bf16 slower than fp32."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without including_emulation: the compute capability says it
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where it is faster on `device` (see `fast_bf16`), else fp32."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked (`bf16`, or `auto` where it is faster); a no-op for `fp32`."""
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float images pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _batches(images: torch.Tensor | ImageStore, batch_size: int, workers: int | None):
    if isinstance(images, ImageStore):  # decoded in DataLoader workers while the model runs
        yield from images.batches(batch_size, workers)
        return
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor | ImageStore,
    batch_size: int = 64,
    tta: bool = False,
    precision: str = "fp32",
    workers: int | None = None,
) -> torch.Tensor:
    """`logits` (N, K) in fp32 for `images` (uint8 or float in [0, 1]), on the images' device.

    Batches go to the model's device; `tta` averages the logits of each image and its mirror.
    Batch 64 is the fastest per image on 2 CPU cores (it stays in cache). An `ImageStore` is
    read batch by batch in `workers` DataLoader processes (None: `loader_workers()`), so
    memory holds a few batches and the logits, whatever N.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # filled in place: a list of batches then torch.cat held the (N, K) logits twice
    out, done = torch.empty(0, 0, device=images.device), 0
    try:
        for batch in _batches(images, batch_size, workers):
            x = as_float_images(batch.to(device))
            with autocast(device, precision):
                logits = model(x).float()
                if tta:
                    logits = (logits + model(x.flip(3)).float()) / 2
            if done == 0:
                out = torch.empty(len(images), logits.shape[1], device=images.device)
            out[done : done + logits.shape[0]] = logits
            done += logits.shape[0]
    finally:
        model.train(was_training)
    return out[:done]


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows the true class, columns the predicted one."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat.cpu(), minlength=num_classes**2).view(num_classes, num_classes)


ALL_BARS_UP_TO = 12  # classes: up to this many a card draws every probability bar
TOP_BARS = 5  # beyond, the likeliest this many classes, and the truth if it is not among them


@dataclass(frozen=True)
class Mistakes:
    """The misclassified images of a split: where they are and what the model thought.

    The (M, K) probabilities are not held: `probs` computes them from `scores`, the rows of an
    evaluation's own (N, K) logits, which every selection shares (at 50,000 photos of 1,000
    classes a copy would be another 200 MB). Take a selection's or a chunk's `probs`."""

    indices: torch.Tensor  # (M,) positions in the split
    labels: torch.Tensor  # (M,) true classes
    preds: torch.Tensor  # (M,) predicted classes
    confidence: torch.Tensor  # (M,) probability of the prediction
    margins: torch.Tensor  # (M,) logit of the prediction minus logit of the true class
    scores: torch.Tensor  # (R, K) logits (or log-probabilities) the probabilities come from
    rows: torch.Tensor  # (M,) each mistake's row of `scores`
    images: torch.Tensor | None = None  # (M, 3, H, W) uint8, when read back with the split

    @classmethod
    def of_probs(cls, indices, labels, preds, probs, margins, images=None) -> Mistakes:
        """From (M, K) probabilities, e.g. a file's: their logs are the scores (the softmax of
        log p is p, to float rounding)."""
        confidence = probs.gather(1, preds[:, None]).squeeze(1)
        rows = torch.arange(len(indices), device=probs.device)
        return cls(indices, labels, preds, confidence, margins, probs.log(), rows, images)

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def probs(self) -> torch.Tensor:
        """(M, K) softmax probabilities, computed each time from the shared scores."""
        return self.scores[self.rows].float().softmax(1)

    def bar_classes(self) -> list[list[int]]:
        """The classes each mistake's probability bars show, in class order: all of them up to
        `ALL_BARS_UP_TO` classes, else the `TOP_BARS` likeliest plus the truth (one top-k)."""
        k = self.scores.shape[1]
        if k <= ALL_BARS_UP_TO:
            return [list(range(k))] * len(self)
        # the likeliest by their scores: the softmax keeps the order, so no (M, K) softmax
        top = self.scores[self.rows].topk(TOP_BARS, dim=1).indices  # (M, K) -> (M, TOP_BARS)
        return [
            sorted({*row, label})
            for row, label in zip(top.tolist(), self.labels.tolist(), strict=True)
        ]

    def select(self, keep: torch.Tensor | slice) -> Mistakes:
        """A subset or reordering, by index tensor, boolean mask or slice; the scores shared."""
        return Mistakes(
            self.indices[keep],
            self.labels[keep],
            self.preds[keep],
            self.confidence[keep],
            self.margins[keep],
            self.scores,
            self.rows[keep],
            None if self.images is None else self.images[keep],
        )


# rows of (N, K) a temporary holds at once: at K = 1,000 a softmax or log-softmax of all 50,000
# rows was 200 MB each; at K = 10 (CIFAR) every N of a test set is one chunk, as before
CHUNK_CELLS = 1 << 22


def _chunks(n: int, k: int) -> list[slice]:
    step = max(1, CHUNK_CELLS // max(k, 1))
    return [slice(s, s + step) for s in range(0, n, step)]


def find_mistakes(logits: torch.Tensor, labels: torch.Tensor) -> Mistakes:
    """Every image whose arg-max differs from its label, most confident first. Its scores are
    `logits` itself, not a copy; the softmax runs a chunk of rows at a time."""
    preds = logits.argmax(1)
    wrong = (preds != labels).nonzero().flatten()
    parts = _chunks(len(wrong), logits.shape[1])
    confidence = [logits[wrong[c]].softmax(1).max(1).values for c in parts]
    confidence = torch.cat(confidence) if parts else logits.new_empty(0)
    order = confidence.argsort(descending=True, stable=True)
    wrong, confidence = wrong[order], confidence[order]
    margins = logits[wrong, preds[wrong]] - logits[wrong, labels[wrong]]
    return Mistakes(wrong, labels[wrong], preds[wrong], confidence, margins, logits, wrong)


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean cross-entropy, a chunk of rows at a time (one chunk at CIFAR's K)."""
    parts = _chunks(logits.shape[0], logits.shape[1])
    if len(parts) == 1:
        return F.cross_entropy(logits, labels).item()
    total = sum(F.cross_entropy(logits[c], labels[c], reduction="sum").item() for c in parts)
    return total / logits.shape[0]


@dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` measured on one split."""

    loss: float
    accuracy: float
    per_class: list[float]  # accuracy of each true class
    confusion: torch.Tensor  # (K, K)
    logits: torch.Tensor  # (N, K)
    mistakes: Mistakes

    def summary(self, classes: Sequence[str]) -> dict:
        return {
            "test_loss": self.loss,
            "test_acc": self.accuracy,
            "per_class_acc": dict(zip(classes, self.per_class, strict=False)),
            "misclassified": len(self.mistakes),
            "images": int(self.logits.shape[0]),
        }


def evaluate(
    model: nn.Module, split: Split, batch_size: int = 64, tta: bool = False, precision: str = "fp32"
) -> Evaluation:
    """Loss, accuracy, per-class accuracy, confusion and mistakes of `model` on one split.

    Under torchrun each rank predicts its share of the images, cut at whole batches (so each
    logit is the one a single process computes), and every rank gets the whole Evaluation.
    """
    rows, count = shard_rows(len(split), batch_size)
    mine = rows_of(split.images, rows)  # a store's rows stay unread until predict walks them
    logits = gather(predict(model, mine, batch_size, tta, precision)[:count])
    labels = split.labels.to(logits.device)
    k = logits.shape[1]
    confusion = confusion_matrix(labels, logits.argmax(1), k)
    per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
    return Evaluation(
        loss=mean_loss(logits, labels),
        accuracy=(logits.argmax(1) == labels).float().mean().item(),
        per_class=per_class,
        confusion=confusion,
        logits=logits,
        mistakes=find_mistakes(logits, labels),
    )


def _csv_bytes(rows: list[list]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def write_evaluation(ev: Evaluation, classes: Sequence[str], out: str | Path, meta: dict) -> dict:
    """metrics.json, confusion.csv, confusion.png, misclassified.csv and .safetensors in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**meta, **ev.summary(classes)}
    atomic_write_bytes(out / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
    rows = [["true \\ predicted", *classes]]
    rows += [[c, *ev.confusion[i].tolist()] for i, c in enumerate(classes)]
    atomic_write_bytes(out / "confusion.csv", _csv_bytes(rows))
    plot_confusion(ev.confusion, classes, out / "confusion.png")
    write_mistakes(ev.mistakes, classes, out / "misclassified.csv")
    return summary


def write_mistakes(m: Mistakes, classes: Sequence[str], path: Path) -> None:
    """`path` (misclassified.csv): a row per mistake with its `TOP_BARS` likeliest classes; and
    beside it `path`.safetensors with every class's probability, (M, K) float32: at K = 1,000 a
    column per class would make a 100 MB csv, written and parsed in Python. The csv is streamed
    to disk a chunk of rows at a time; the probabilities are built whole once, for the file."""
    top = min(TOP_BARS, m.scores.shape[1])
    header = ["index", "label", "pred", "confidence", "margin"]
    header += [f"{kind}{r + 1}" for r in range(top) for kind in ("top", "p_top")]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(header)
            for c in _chunks(len(m), m.scores.shape[1]):
                values, ids = m.select(c).probs.topk(top, dim=1)
                columns = (m.indices[c], m.labels[c], m.preds[c], m.confidence[c], m.margins[c])
                for index, t, p, conf, margin, ks, ps in zip(
                    *(x.tolist() for x in (*columns, ids, values)), strict=True
                ):
                    tops = (
                        y for k, v in zip(ks, ps, strict=True) for y in (classes[k], f"{v:.6f}")
                    )
                    out.writerow(
                        [index, classes[t], classes[p], f"{conf:.6f}", f"{margin:.6f}", *tops]
                    )

    # the file's (M, K) probabilities: the one moment they are held whole
    tensors = {"indices": m.indices.long().contiguous(), "probs": m.probs.contiguous()}
    meta = {"classes": json.dumps(list(classes)), "rows": "the rows of " + path.name}
    beside = path.with_suffix(".safetensors")
    atomic_write_files({path: write_csv, beside: save(tensors, metadata=meta)})


def read_mistakes(path: str | Path, split: Split | None = None) -> Mistakes:
    """Read misclassified.csv and its .safetensors (the probabilities) back; with the test
    `split`, the images come along. A csv of camlens 0.1.0, with a p_<class> column per class,
    reads alone."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    indices = torch.tensor([int(r[0]) for r in rows], dtype=torch.long)
    if any(h.startswith("p_") and not h.startswith("p_top") for h in header):  # the old csv
        classes = [h[2:] for h in header if h.startswith("p_")]
        p0 = header.index(f"p_{classes[0]}")
        probs = torch.tensor([[float(x) for x in r[p0:]] for r in rows]).view(-1, len(classes))
    else:
        beside = path.with_suffix(".safetensors")
        if not beside.is_file():
            raise DataError(f"{path} needs {beside.name} beside it: it holds the probabilities")
        with safe_open(beside, "pt") as f:
            classes = json.loads(f.metadata()["classes"])
            probs = f.get_tensor("probs")
            if not torch.equal(f.get_tensor("indices"), indices):
                raise DataError(f"{beside.name} does not hold the rows of {path.name}")
    ids = {c: i for i, c in enumerate(classes)}
    mistakes = Mistakes.of_probs(
        indices,
        torch.tensor([ids[r[1]] for r in rows], dtype=torch.long),
        torch.tensor([ids[r[2]] for r in rows], dtype=torch.long),
        probs,
        torch.tensor([float(r[4]) for r in rows]),
    )
    if split is None:
        return mistakes
    if len(indices) and int(indices.max()) >= len(split):
        raise DataError(f"{path} names image {int(indices.max())} but the split has {len(split)}")
    bad = split.labels[indices] != mistakes.labels
    if bad.any():
        raise DataError(
            f"{path} does not belong to this data: its true labels differ from the split's"
        )
    return replace(mistakes, images=split.images[indices])
