"""Optional Weights & Biases mirror of a run: imported only when a run asks for it (--wandb).

metrics.jsonl stays the source of truth; W&B gets the same numbers each epoch, then the
curves, the confusion matrix, a sample of gallery cards and the final accuracy. Its files go
into OUT/wandb/, never the current directory. Without an API key it runs offline and says
once how to sync; a W&B failure is reported once and never stops or fails the training run.
A resumed run continues the same W&B run: its id is kept in OUT/wandb/run-id.
"""

from __future__ import annotations

import io
import netrc
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from camlens.atomic import atomic_write_bytes

__all__ = ["WandbLogger"]


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """An `on_epoch` callback (`logger(metrics)`) plus `finish(...)` for the end-of-run pictures."""

    def __init__(
        self, out: Path, project: str, config: dict, log: Callable[[str], None] = print
    ) -> None:
        import wandb  # checked importable by run_training

        self._wandb, self._log, self._run = wandb, log, None
        folder = out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run-id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B's id form: 8 of [a-z0-9]
            atomic_write_bytes(id_file, (run_id + "\n").encode())
        # the user's WANDB_MODE wins; otherwise online only with a key, so CI never waits
        mode = os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
        settings = wandb.Settings(silent=True, console="off", init_timeout=30)
        kwargs = dict(
            dir=str(out),
            project=project,
            id=run_id,
            resume="allow",
            config=config,
            settings=settings,
        )
        try:
            self._run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # no network, bad key: the run goes on, offline
            if mode == "offline":
                self._fail(e)
                return
            log(f"W&B online start failed ({str(e).splitlines()[0][:120]}); logging offline")
            try:
                self._run = wandb.init(mode="offline", **kwargs)
            except Exception as e2:
                self._fail(e2)
                return
        if self._run is not None and self._run.settings.mode == "offline":
            where = Path(self._run.dir).parent
            log(f"W&B is offline: the run is in {where}; upload it with `wandb sync {where}`")

    def _fail(self, e: Exception) -> None:
        self._log(
            f"W&B logging stopped ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "the run goes on, metrics.jsonl has every epoch"
        )
        self._run = None

    def _safely(self, fn: Callable[[], Any]) -> None:
        if self._run is None:
            return
        try:
            fn()
        except Exception as e:
            self._fail(e)

    def __call__(self, metrics: dict) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._safely(lambda: self._run.log(numbers, step=int(metrics["epoch"])))

    def finish(
        self,
        *,
        accuracy: float | None = None,
        curves: Path | None = None,
        confusion_png: bytes | None = None,
        cards: Sequence[Path] = (),
    ) -> None:
        """Log the pictures and the final accuracy, then close the run (uploading when online)."""

        def images() -> None:
            from PIL import Image

            wandb, pictures = self._wandb, {}
            if curves is not None and Path(curves).is_file():
                pictures["curves"] = wandb.Image(str(curves))
            if confusion_png is not None:
                pictures["confusion"] = wandb.Image(Image.open(io.BytesIO(confusion_png)))
            if cards:
                pictures["gallery"] = [wandb.Image(str(p), caption=Path(p).stem) for p in cards]
            if pictures:
                self._run.log(pictures)
            if accuracy is not None:
                self._run.summary["test_acc"] = accuracy

        self._safely(images)
        self._safely(lambda: self._run.finish())
        self._run = None
