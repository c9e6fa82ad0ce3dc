"""camlens: where a CNN looks when it gets an image wrong.

Pipeline, one module per step (each imports only those above it):
  download -> data -> model -> classifier -> plots -> evaluate -> train
  -> cam -> metrics -> explain -> outputs -> mapfile -> overlay -> gallery -> epochs -> watch
  -> report -> compare -> diff -> view -> pipeline -> cli
`explain` computes every map of a job; the gallery, the report, diff and epochs read them.
Outputs consume its stream (`outputs.Output`, `consume`), registered by name in
`pipeline.OUTPUTS`: the gallery (`GalleryWriter`), the maps file (`MapFile`, `read_maps`).
`view` serves a live viewer of any mistake (camlens[view]): maps on demand, by method, layer
and class.
`pipeline` is the whole job as functions (run, demo, explain_model): what the CLI calls;
its `report` (any trained classifier's report) stays `camlens.pipeline.report`, as
`camlens.report` names the report package.

One plan, one road: `ExplainPlan` (methods, layers, batch sizes, precision, which mistakes)
is built once from flags or in a notebook, checked once against the model
(`pipeline.prepare_plan`), and passed whole: pipeline -> gallery, report, diff, epochs.

The "explain" family, one meaning per name:
  Engine.explain, .explain_many, .explain_pair   the engine call: images + targets -> CamResult
                        (camlens.cam; `cam.explain_pair` opens an engine for one such call)
  mistake_maps          mistakes' images -> Explanations (pred, label, contrast per layer)
  stream_mistake_maps   the same, chunk by chunk: what the gallery and the report consume
  compute_maps          images + target sets -> (L, N, H, W) maps (diff, the report's
                        correct images; any step that explains images other than mistakes)
  explain_model         the whole job: evaluate, gallery per method, report.html
  explain_over_epochs   the job of `explain --over-epochs`: maps across kept epochs

Glossary (one name per concept, everywhere):
  images   (N, 3, H, W) float in [0, 1], un-normalised (uint8 in [0, 255] when stored)
  labels   (N,) true classes            preds    (N,) predicted classes
  targets  (N,) the class a map explains
  logits   (N, K)                       classes  the K class names
  acts, grads  (N, C, h, w) at the hooked layer
  maps     (N, H, W) maps at the input's resolution
  pred_maps, label_maps, contrast_maps   maps of the predicted class, the true class, their
           contrast; pred_name / label_name a class name, pred_index / label_index one index
"""

import importlib
import importlib.util
import sys
import types
import typing

from camlens.version import __version__

# where each public name is defined, a space-separated list per module. `import camlens`
# imports none of these modules (so no torch, no matplotlib: `camlens --version` answers at
# once); a name's module is imported the first time the name is used, and then stays bound
_SOURCES: dict[str, str] = {
    "camlens.cam": (
        "CAM ISCAM KPCACAM METHODS SSCAM AblationCAM AblationKnobs CamConfig CamResult EigenCAM "
        "EigenGradCAM FinerCAM FinerKnobs ISKnobs KPCAKnobs Knobs SSKnobs ScoreKnobs SmoothKnobs "
        "FullGrad GradCAM GradCAMElementWise GradCAMPlusPlus GuidedGradCAM HiResCAM "
        "LayerCAM PairResult RefineCAM ScoreCAM ShapleyCAM Similar SmoothGradCAMPlusPlus Target "
        "XGradCAM create explain_pair"
    ),
    "camlens.classifier": "Classifier ModelConfig Opened load_weights open_model",
    "camlens.compare": "CompareConfig CompareResult compare",
    "camlens.data": "DataError Dataset Split UserData as_dataset from_user_data load_dataset",
    "camlens.diff": "ModelDiff diff_models write_diff",
    "camlens.download": "DownloadError fetch_cifar10",
    "camlens.epochs": "EpochStrips explain_over_epochs",
    "camlens.evaluate": (
        "Evaluation Mistakes confusion_matrix evaluate find_mistakes predict read_mistakes "
        "write_evaluation"
    ),
    "camlens.explain": (
        "ExplainError ExplainPlan Explanations compute_maps mistake_maps select_mistakes "
        "stream_mistake_maps"
    ),
    "camlens.gallery": "GalleryConfig GalleryWriter write_gallery",
    "camlens.mapfile": "MapFile read_maps",
    "camlens.model": "CheckpointError ResNet18 layer_names load_checkpoint save_checkpoint summary",
    "camlens.outputs": "Output consume",
    "camlens.overlay": "colorize enlarge heatmap_rgba overlay",
    "camlens.pipeline": "OUTPUTS OutputJob demo diff_checkpoints explain_model run write_galleries",
    "camlens.report": "ReportConfig compute_report render_report",
    "camlens.train": "RunError TrainConfig train",
    "camlens.watch": "Watch WatchConfig WatchError",
    "camlens.view": "view",  # serving needs the extra camlens[view]; importing it does not
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names.split()}

__all__ = ["__version__", *_MODULE_OF]  # every public name, in _SOURCES's order


def __getattr__(name: str) -> typing.Any:
    if name.endswith("_cams") and name[:-5] + "_maps" in _MODULE_OF:  # camlens 0.1's name:
        return getattr(importlib.import_module(_MODULE_OF[name[:-5] + "_maps"]), name)  # warns
    if name not in _MODULE_OF:
        # a subpackage, as an eager root would have bound it: `camlens.pipeline.report(...)`
        # after a bare `import camlens` (importing it binds it here, so this runs once)
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Root(types.ModuleType):
    """compare, evaluate, overlay and train are functions named like the packages defining them:
    importing such a package must not bind it here over the function, as a lazy root would."""

    def __setattr__(self, name: str, value: typing.Any) -> None:
        if name in _MODULE_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Root
