"""camlens: where a CNN looks when it gets an image wrong.

Pipeline, one module per step (each imports only those above it):
  download -> data -> model -> classifier -> plots -> evaluate -> train
  -> cam -> metrics -> explain -> overlay -> gallery -> epochs -> report -> compare -> diff
  -> pipeline -> cli
`explain` computes the maps of the mistakes once; the gallery and the report both draw them.
`pipeline` is the whole job as functions (run, demo, explain_model): what the CLI calls;
its `report` (any trained classifier's report) stays `camlens.pipeline.report`, as
`camlens.report` names the report package.

Glossary (one name per concept, everywhere):
  images   (N, 3, H, W) float in [0, 1], un-normalised (uint8 in [0, 255] when stored)
  labels   (N,) true classes            preds    (N,) predicted classes
  targets  (N,) the class a map explains
  logits   (N, K)                       classes  the K class names
  acts, grads  (N, C, h, w) at the hooked layer
  cams     (N, H, W) maps at the input's resolution
  pred_cams, label_cams, contrast_cams   maps of the predicted class, the true class, their
           contrast; pred_name / label_name a class name, pred_index / label_index one index
"""

from camlens.cam import (
    CAM,
    ISCAM,
    KPCACAM,
    METHODS,
    SSCAM,
    AblationCAM,
    CamConfig,
    CamResult,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    PairResult,
    RefineCAM,
    ScoreCAM,
    ShapleyCAM,
    Similar,
    SmoothGradCAMPlusPlus,
    Target,
    XGradCAM,
    create,
    explain_pair,
)
from camlens.classifier import Classifier, ModelConfig, Opened, load_weights, open_model
from camlens.compare import CompareResult, compare
from camlens.data import DataError, Dataset, Split, load_dataset
from camlens.diff import ModelDiff, diff_models, write_diff
from camlens.download import DownloadError, fetch_cifar10
from camlens.epochs import EpochStrips, explain_over_epochs
from camlens.evaluate import (
    Evaluation,
    Mistakes,
    confusion_matrix,
    evaluate,
    find_mistakes,
    predict,
    read_mistakes,
    write_evaluation,
)
from camlens.explain import ExplainError, Explanations, explain_mistakes, select_mistakes
from camlens.gallery import GalleryConfig, write_gallery
from camlens.model import (
    CheckpointError,
    ResNet18,
    layer_names,
    load_checkpoint,
    save_checkpoint,
    summary,
)
from camlens.overlay import colorize, enlarge, heatmap_rgba, overlay
from camlens.pipeline import (
    demo,
    diff_checkpoints,
    explain_model,
    load_matching_data,
    run,
    write_galleries,
)
from camlens.report import ReportConfig, build_report, compute_report, render_report
from camlens.train import RunError, TrainConfig, train
from camlens.version import __version__

__all__ = [
    "__version__",
    # data
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "DownloadError",
    "fetch_cifar10",
    # model
    "Classifier",
    "ModelConfig",
    "Opened",
    "load_weights",
    "open_model",
    "CheckpointError",
    "ResNet18",
    "layer_names",
    "load_checkpoint",
    "save_checkpoint",
    "summary",
    # evaluation
    "Evaluation",
    "Mistakes",
    "confusion_matrix",
    "evaluate",
    "find_mistakes",
    "predict",
    "read_mistakes",
    "write_evaluation",
    # training
    "RunError",
    "TrainConfig",
    "train",
    # CAM engine
    "METHODS",
    "CAM",
    "CamConfig",
    "CamResult",
    "Target",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAMElementWise",
    "SmoothGradCAMPlusPlus",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "PairResult",
    "ScoreCAM",
    "XGradCAM",
    "create",
    "explain_pair",
    # issue 13, helper b: Finer-CAM, RefineCAM, FullGrad, Guided Grad-CAM
    "FinerCAM",
    "FullGrad",
    "GuidedGradCAM",
    "RefineCAM",
    "Similar",
    # Ablation-CAM, SS-CAM, IS-CAM, KPCA-CAM, ShapleyCAM (issue 13)
    "AblationCAM",
    "ISCAM",
    "KPCACAM",
    "SSCAM",
    "ShapleyCAM",
    # explaining the mistakes
    "ExplainError",
    "Explanations",
    "explain_mistakes",
    "select_mistakes",
    # overlays, gallery, report
    "colorize",
    "enlarge",
    "heatmap_rgba",
    "overlay",
    "GalleryConfig",
    "write_gallery",
    "ReportConfig",
    "build_report",
    "compute_report",
    "render_report",
    # maps across training (train --keep-every, explain --over-epochs)
    "EpochStrips",
    "explain_over_epochs",
    # can the maps be trusted? every method and layer scored against baselines (camlens.compare)
    "CompareResult",
    "compare",
    # two models side by side: shared and own mistakes, map agreement (camlens.diff)
    "ModelDiff",
    "diff_models",
    "write_diff",
    # the whole job (camlens.pipeline: its Outcome and Galleries results)
    "demo",
    "diff_checkpoints",
    "explain_model",
    "load_matching_data",
    "run",
    "write_galleries",
]
