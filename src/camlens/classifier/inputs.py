"""The user's model and data as camlens takes them: one call at the entry of each public job.

    model, data = adapt_user_input(model, loader)   # Classifier(model, mean, std), a Dataset

camlens feeds models [0, 1] images and holds test data as a camlens `Dataset` of uint8
pixels. A user's own test data (a DataLoader or torch Dataset, arrays, a `UserData`) is read
once into such a `Dataset` (`as_dataset`); when it carries a normalisation (given, or read
from the dataset's transform) the model was trained on normalised images, so it is wrapped in
`Classifier(model, mean, std)`, which normalises camlens's [0, 1] images on the way in.
A camlens `Dataset` with nothing else said passes through untouched, so a job that calls
another (report -> explain_model -> compare) adapts its input once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from torch import nn

from camlens.classifier.spec import Classifier, parameters_of
from camlens.data import DataError, Dataset, UserData, as_dataset, from_user_data

__all__ = ["adapt_user_input", "own_layer_names"]

Models = TypeVar("Models", nn.Module, tuple[nn.Module, ...])


def adapt_user_input(
    model: Models,
    data: Any,
    classes: Sequence[str] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Models, Dataset]:
    """(`model` as camlens calls it, `data` as a camlens `Dataset`).

    `data`: anything `from_user_data` takes (a DataLoader or torch Dataset yielding (image,
    label), `(images, labels)` arrays, a camlens `Dataset` or `Split`), or a `UserData`.
    `classes`: the class names (or their number); None: the data's own `classes`.
    `mean`/`std`: the normalisation the model expects its input in; None: the one the data
    carries (a torchvision-style `Normalize` in its transform), else none. Where there is one,
    the model is wrapped in `Classifier(model, mean, std)` on the model's device, and its
    layers are then `model.NAME` (`own_layer_names` maps NAME to it). `model` may be a tuple
    of models that take the same input (two models compared): each is wrapped alike.
    """
    if isinstance(data, Dataset) and classes is None and mean is None and std is None:
        return _speaking_logits(model), data
    if isinstance(data, UserData):
        if classes is not None or mean is not None or std is not None:
            raise DataError(
                "the data is a UserData, which says its classes and normalisation: pass "
                "classes=, mean= and std= to from_user_data, not again here"
            )
        user = data
    else:
        user = from_user_data(data, classes=classes, mean=mean, std=std)
    dataset = as_dataset(user)
    if user.mean is None:
        return _speaking_logits(model), dataset
    if isinstance(model, tuple):
        return tuple(_normalising(m, user.mean, user.std) for m in model), dataset
    return _normalising(model, user.mean, user.std), dataset


def own_layer_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """In a `Classifier` the wrapped model's layers are `model.NAME`: each NAME that is not a
    layer of the wrapper but is one of the wrapped model becomes `model.NAME` (in joined
    names, "layer3+layer4", each part); other names stay as given, for the check to judge."""
    if not isinstance(model, Classifier):
        return list(layers)
    names = dict(model.named_modules())

    def own(name: str) -> str:
        return f"model.{name}" if name not in names and f"model.{name}" in names else name

    return ["+".join(own(part) for part in layer.split("+")) for layer in layers]


def _speaking_logits(model: Models) -> Models:
    """A model whose forward takes `pixel_values=` (a Hugging Face classifier, whose output is
    a ModelOutput) wrapped to take [0, 1] images and return its logits; others as they are."""
    if isinstance(model, tuple):
        return tuple(_speaking_logits(m) for m in model)
    if isinstance(model, Classifier) or "pixel_values" not in parameters_of(model.forward):
        return model
    return _normalising(model, (0.0,) * 3, (1.0,) * 3)


def _normalising(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """`model` fed [0, 1] images normalised with `mean`/`std`, its mean/std on its device."""
    device = next(model.parameters()).device
    return Classifier(model, tuple(mean), tuple(std)).to(device)
