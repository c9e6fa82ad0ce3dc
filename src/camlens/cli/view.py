"""`camlens view`: open a folder, or a model and its data, and serve the viewer until Ctrl-C.

Apart from commands.py: its web libraries are the optional extra camlens[view], imported only
when the command runs (`need_extra` names the extra in one line when they are missing).
"""

from __future__ import annotations

import argparse
import dataclasses

from camlens.classifier import ModelConfig, open_model
from camlens.cli.commands import config_from_args, pick_device
from camlens.data import DataConfig, DataError

__all__ = ["cmd_view"]


def cmd_view(args: argparse.Namespace) -> int:
    from camlens.view import ViewError, need_extra, open_folder, open_viewer

    need_extra()  # without the extra: one line naming `pip install 'camlens[view]'`
    from camlens.view.server import serve

    data = DataConfig(args.class_names, args.resize, args.interpolation)
    device = pick_device(args.device)
    try:
        if args.folder is not None:
            fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"model"}
            config = ModelConfig(args.model, **{n: getattr(args, n) for n in fields})
            viewer = open_folder(
                args.folder, config, args.data, device=str(device), data_config=data,
                layers=args.layers,
            )  # fmt: skip
        elif args.model is None or args.data is None:
            raise DataError("view needs a folder (camlens view RUN) or --model SPEC --data DATA")
        else:
            opened = open_model(config_from_args(args, ModelConfig), args.data, device, False, data)
            prep = data.preprocess(opened.data.image_size)
            viewer = open_viewer(opened.model, opened.data, layers=args.layers, preprocess=prep)
    except ViewError as e:
        raise DataError(str(e)) from None
    viewer.rows()  # the mistakes: read from the folder, else predicted now, not on first visit
    try:
        running = serve(viewer, args.host, args.port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise DataError(
            f"cannot serve on {args.host}:{args.port} ({e.strerror}): --port 0 picks a free port"
        ) from None
    print(f"camlens view: {running.url}  (Ctrl-C stops it)", flush=True)
    running.wait()
    return 0
