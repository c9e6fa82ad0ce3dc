"""`camlens view`: explore mistakes live in the browser, by method, layer, class and opacity.

    view(model, data, ...) -> Running      from Python: served in a thread; shown inline in
                                           Jupyter (and in Colab through its kernel proxy)
    open_viewer(model, data, ...) -> Viewer    the state alone (what the tests drive)
    open_folder(root, ...) -> Viewer       a run, report, explain or evaluate folder
    serve(viewer, host, port) -> Running   uvicorn in a thread; `.url`, `.stop()`

    rows.py    Rows, Query: filter, sort and page the rows as tensors
    folder.py  read_folder (json, csv, safetensors only), inside(): the path gate
    upload.py  read_upload: size limit, decompression-bomb guard, the data's decoding
    state.py   Viewer: one lock around the model, the LRU map cache, maps and counterfactuals
    app.py     the Starlette app; page.html the page it serves
    server.py  serve, Running

A consumer of explain like the gallery and the report: its maps come from
`camlens.explain.engine_for`. The web libraries (starlette, uvicorn) are the optional extra
`camlens[view]`: importing this package needs none of them, serving does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from camlens.cam import candidate_layers, pick_layer
from camlens.choices import DEFAULT_LAYERS, METHOD_NAMES
from camlens.classifier import ModelConfig, adapt_user_input, open_model, own_layer_names
from camlens.data import DataConfig, DataError, Dataset, Preprocess
from camlens.plan import check_methods
from camlens.view.folder import Folder, read_folder
from camlens.view.state import Source, Viewer, ViewError

__all__ = [
    "EXTRA",
    "Viewer",
    "ViewError",
    "need_extra",
    "open_folder",
    "open_viewer",
    "view",
]

EXTRA = "camlens view needs its web server: pip install 'camlens[view]'"


def need_extra() -> None:
    """A one-line DataError naming the extra when starlette or uvicorn is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DataError(EXTRA) from None


def _layers(model: nn.Module, size: int, layers: Sequence[str] | None, camlens: bool):
    """The layers the page offers: `layers` (else layer4/layer3 of a camlens model, else the
    last before the global pooling) first, then every other one, deepest first."""
    found = [c.name for c in candidate_layers(model, size) if c.misfit is None]
    if layers:
        first = list(own_layer_names(model, list(layers)))
    elif camlens:
        first = list(reversed(DEFAULT_LAYERS))
    else:
        first = [pick_layer(model, size).name]
    unknown = [n for n in first if n not in found]
    if unknown:
        raise ViewError(f"no layer {unknown[0]!r} a map can be read from")
    return tuple(first + [n for n in reversed(found) if n not in first])


def open_viewer(
    model: Any,
    data: Any,
    *,
    layers: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    folder: Folder | None = None,
    preprocess: Preprocess | None = None,
) -> Viewer:
    """A viewer of `model` on `data`'s test split: a camlens `Dataset`, or the user's data as
    `explain_model` takes it (`adapt_user_input`). `methods` None: all, gradcam first;
    `preprocess` (how an upload is resized): None, a centre crop at the data's size."""
    model, data = adapt_user_input(model, data)
    size = data.image_size
    camlens = folder is not None or all(hasattr(model, n) for n in DEFAULT_LAYERS)
    methods = tuple(methods or ("gradcam", *[m for m in METHOD_NAMES if m != "gradcam"]))
    check_methods(methods)
    source = Source(
        model=model.eval(),
        images=data.test.images,
        labels=data.test.labels.cpu(),
        classes=tuple(data.classes),
        layers=_layers(model, size, layers, camlens),
        methods=methods,
        preprocess=preprocess or Preprocess(size),
        folder=folder,
    )
    return Viewer(source)


def open_folder(
    root: str | Path,
    model: ModelConfig | str | None = None,
    data: str | Dataset | None = None,
    *,
    device: str = "cpu",
    data_config: DataConfig | None = None,
    layers: Sequence[str] | None = None,
) -> Viewer:
    """A viewer of folder `root`: its model and data as its files say (eval/metrics.json,
    the run's checkpoint), or `model` (a --model spec, or a ModelConfig whose `model` may be
    None: the folder's) and `data` where given."""
    folder = read_folder(root)
    config = model if isinstance(model, ModelConfig) else ModelConfig(model)  # type: ignore[arg-type]
    spec, source = config.model or folder.model, data or folder.data
    if spec is None or source is None:
        raise DataError(
            f"{root} does not say which model and data made it: pass --model SPEC --data DATA"
        )
    opened = open_model(replace(config, model=spec), source, device, False, data_config)
    prep = (data_config or DataConfig()).preprocess(opened.data.image_size)
    return open_viewer(opened.model, opened.data, layers=layers, folder=folder, preprocess=prep)


def _in_colab() -> Any:
    try:
        from google.colab import output  # type: ignore[import-not-found]
    except ImportError:
        return None
    return output


def view(
    model: Any,
    data: Any = None,
    *,
    layers: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    folder: str | Path | None = None,
):
    """Serve the viewer of `model` (a module, or a --model spec such as "shipped") on `data`
    (or of `folder`, a run/report folder, with
    `model` None) in a background thread and return it: in Jupyter the returned object shows
    the page inline (an iframe), in Colab it is shown through Colab's kernel proxy; `.url`
    for a browser, `.stop()` to end it. The kernel is never blocked."""
    need_extra()
    from camlens.view.server import serve  # needs the extra

    if folder is not None:
        viewer = open_folder(folder, model if isinstance(model, str) else None, data)
    elif isinstance(model, str):  # a --model spec and a --data source, as the CLI takes them
        opened = open_model(ModelConfig(model), data, "cpu", False)
        viewer = open_viewer(opened.model, opened.data, layers=layers, methods=methods)
    else:
        viewer = open_viewer(model, data, layers=layers, methods=methods)
    viewer.rows()  # the mistakes: read from the folder, else predicted now, not on first visit
    colab = _in_colab()
    running = serve(viewer, host, port, proxied=colab is not None)
    if colab is not None:
        colab.serve_kernel_port_as_iframe(running.port, height=820)
        running.shown = True
    return running
