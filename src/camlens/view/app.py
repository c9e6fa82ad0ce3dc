"""The HTTP side of the viewer: a small Starlette app over one `Viewer`.

    GET  /                      the page (camlens/view/page.html)
    GET  /api/info              classes, layers, methods, colormaps, what the folder holds
    GET  /api/rows?...          one page of rows (filters, sort, offset, limit: `Query`)
    GET  /api/image/KEY         one image: pixels, probability bars, its gallery cards
    GET  /api/map?image=&method=&layer=&target=     a map, computed or cached, and its trust
    GET  /api/counterfactual?...&fraction=          remove the map's top, ask the model again
    POST /api/upload            an image file as the body (at most upload.MAX_BYTES)
    GET  /files/PATH            a file of the opened folder, never one outside it

Every error a request can cause is a JSON {"error": one line} with a 4xx status; the server
keeps running. Endpoints are plain functions, run by Starlette in its thread pool: the model
they share is guarded by `Viewer.lock`.
"""

from __future__ import annotations

import base64
import io
from importlib import resources

import numpy as np
import torch
from PIL import Image as PILImage
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from camlens.overlay import COLORMAPS, colormap_table
from camlens.view.folder import Refused, inside, trust_of
from camlens.view.rows import CF_VERDICTS, SORTS, Query
from camlens.view.state import Image, Viewer, ViewError
from camlens.view.upload import MAX_BYTES, UploadError

__all__ = ["build_app", "png_b64"]

TOP_BARS = 5  # probability bars: the likeliest five, and the truth if it is not among them


def png_b64(pixels: np.ndarray) -> str:
    """(H, W) or (H, W, 3) uint8 -> a PNG as base64 text, for a data: URL."""
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _error(e: Exception, status: int = 400) -> JSONResponse:
    line = str(e).splitlines()[0] if str(e) else type(e).__name__
    return JSONResponse({"error": line}, status_code=status)


def _guarded(fn):
    """`fn(viewer, request)` with the viewer's user errors as one-line JSON answers."""

    def endpoint(request: Request) -> Response:
        try:
            return fn(request.app.state.viewer, request)
        except Refused as e:
            return _error(e, 403)
        except FileNotFoundError as e:
            return _error(FileNotFoundError(f"no file {e} in the opened folder"), 404)
        except (ViewError, UploadError, ValueError, KeyError) as e:
            return _error(e)

    return endpoint


def _info(viewer: Viewer, request: Request) -> Response:
    src = viewer.source
    folder = src.folder
    tables = {n: (colormap_table(n) * 255).round().byte().tolist() for n in COLORMAPS}
    return JSONResponse(
        {
            "classes": list(src.classes),
            "layers": list(src.layers),
            "methods": list(src.methods),
            "colormaps": tables,
            "sorts": list(SORTS),
            "verdicts": list(CF_VERDICTS),
            "has_cf": folder is not None and folder.cf is not None,
            "has_compare": folder is not None and folder.compare is not None,
            "folder": None if folder is None else str(folder.root),
            "images": len(src.labels),
            "max_upload_mb": MAX_BYTES // (1024 * 1024),
        }
    )


def _class_arg(request: Request, name: str, classes) -> int | None:
    value = request.query_params.get(name) or None
    if value is None:
        return None
    if value not in classes:
        raise ViewError(f"unknown class {value!r}")
    return list(classes).index(value)


def _rows(viewer: Viewer, request: Request) -> Response:
    p, classes = request.query_params, viewer.source.classes
    q = Query(
        correct=p.get("correct") in ("1", "true"),
        label=_class_arg(request, "label", classes),
        pred=_class_arg(request, "pred", classes),
        conf_min=float(p.get("conf_min", 0)),
        conf_max=float(p.get("conf_max", 1)),
        cf=p.get("cf") or None,
        sort=p.get("sort", "confidence"),
        offset=int(p.get("offset", 0)),
        limit=int(p.get("limit", 50)),
    )
    total, page = viewer.rows(q.correct).page(q, classes)
    return JSONResponse({"total": total, "offset": q.offset, "rows": page})


def _bars(viewer: Viewer, img: Image) -> list[dict]:
    probs = viewer.logits_of(img).float().softmax(0)
    top = probs.topk(min(TOP_BARS, probs.shape[0])).indices.tolist()
    if img.label is not None and img.label not in top:
        top.append(img.label)
    names = viewer.source.classes
    return [
        {"class": names[c], "index": c, "p": round(float(probs[c]), 4), "truth": c == img.label}
        for c in top
    ]


def image_json(viewer: Viewer, img: Image) -> dict:
    names, folder = viewer.source.classes, viewer.source.folder
    cards = {}
    if folder is not None and img.index is not None:
        cards = {m: c[img.index] for m, c in folder.cards.items() if img.index in c}
    pred = int(viewer.logits_of(img).argmax())
    return {
        "key": img.key,
        "index": img.index,
        "label": None if img.label is None else names[img.label],
        "pred": names[pred],
        "bars": _bars(viewer, img),
        "png": png_b64(img.pixels.permute(1, 2, 0).cpu().numpy()),
        "cards": cards,  # method -> path under /files/: the gallery's card of this image
    }


def _image(viewer: Viewer, request: Request) -> Response:
    return JSONResponse(image_json(viewer, viewer.image(request.path_params["key"])))


def _map_args(viewer: Viewer, request: Request) -> tuple[Image, str, str, str]:
    p = request.query_params
    src = viewer.source
    return (
        viewer.image(p.get("image", "")),
        p.get("method", src.methods[0]),
        p.get("layer", src.layers[0]),
        p.get("target", "pred"),
    )


def _map(viewer: Viewer, request: Request) -> Response:
    img, method, layer, target = _map_args(viewer, request)
    maps, how = viewer.cam(img, method, layer, target)
    signed = how["versus"] is not None
    # (H, W) in [0, 1], or [-1, 1] signed -> uint8 grey; the page colours it
    grey = (maps + 1) / 2 if signed else maps
    pixels = (grey.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    names = viewer.source.classes
    what = names[how["class"]] + (f" rather than {names[how['versus']]}" if signed else "")
    folder = viewer.source.folder
    return JSONResponse(
        {
            "png": png_b64(pixels),
            "signed": signed,
            "explains": what,
            "cached": how["cached"],
            "stored": how.get("stored", False),  # from the folder's maps file
            "ms": how["ms"],
            "trust": trust_of(None if folder is None else folder.compare, method, layer),
        }
    )


def _counterfactual(viewer: Viewer, request: Request) -> Response:
    img, method, layer, target = _map_args(viewer, request)
    fraction = float(request.query_params.get("fraction", 0.1))
    return JSONResponse(viewer.counterfactual(img, method, layer, target, fraction))


def _file(viewer: Viewer, request: Request) -> Response:
    root = viewer.folder_root()
    if root is None:
        raise Refused("no folder is open: the viewer was opened on a model and data")
    return FileResponse(inside(root, request.path_params["path"]))


def _page(request: Request) -> Response:
    page = resources.files("camlens.view").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


async def _upload(request: Request) -> Response:
    """The body is the file itself (the page sends it raw); read at most MAX_BYTES + 1."""
    viewer = request.app.state.viewer
    name = request.headers.get("x-filename", "upload")[:200]
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BYTES:
        return _error(UploadError(f"{name} is {int(size) / 1e6:.1f} MB: the limit is 10 MB"), 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            return _error(UploadError(f"{name} is over 10 MB: the limit is 10 MB"), 413)
    try:
        img = await run_in_threadpool(viewer.add_upload, bytes(body), name)
        return JSONResponse(await run_in_threadpool(image_json, viewer, img))
    except (UploadError, ViewError) as e:
        return _error(e)


def build_app(viewer: Viewer, hosts: list[str] | None = None) -> Starlette:
    """The Starlette app serving `viewer` (see the module docstring). `hosts`: the only Host
    headers answered (None: any), so that a web page whose domain is pointed at 127.0.0.1
    (DNS rebinding) cannot read the folder or run the model through the visitor's browser."""
    routes = [
        Route("/", _page),
        Route("/api/info", _guarded(_info)),
        Route("/api/rows", _guarded(_rows)),
        Route("/api/image/{key}", _guarded(_image)),
        Route("/api/map", _guarded(_map)),
        Route("/api/counterfactual", _guarded(_counterfactual)),
        Route("/api/upload", _upload, methods=["POST"]),
        Route("/files/{path:path}", _guarded(_file)),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)] if hosts else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.viewer = viewer
    return app
