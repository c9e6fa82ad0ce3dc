"""Any image classifier as a camlens model: name it, load its weights, feed it [0, 1] images.

    --model SPEC               what it names
    shipped | shipped-layer    a bundled camlens model
    run/checkpoint.safetensors a camlens checkpoint (its .json beside it)
    path/to/file.py:factory    a callable in a Python file that returns an nn.Module
    package.module:factory     the same, from an importable module
    timm:NAME, torchvision:NAME  the architecture by name; the weights only from --weights

A factory is called with `num_classes=` (the data's class count) when it takes that argument.
`--weights` is a `.safetensors` file or a state dict in `.pt`/`.pth`, read with
`torch.load(weights_only=True)`: a pickled whole model is refused, never unpickled. Every
camlens path passes images in [0, 1]; `Classifier` normalises them with the model's mean/std
first (camlens checkpoints normalise inside the model and need no wrapper).

    spec.py     ModelConfig, Classifier (the [0, 1] wrapper), build_architecture, native_size
    weights.py  load_weights, read_state_dict: .safetensors or a state dict, never a pickle
    load.py     open_model (data + model, checked against each other), build_classifier
    inputs.py   adapt_user_input: the user's model and data (DataLoader, arrays) as camlens
                takes them, at the entry of each job; own_layer_names
"""

from camlens.classifier.inputs import adapt_user_input, own_layer_names
from camlens.classifier.load import Opened, build_classifier, open_model, stated_size
from camlens.classifier.spec import Classifier, ModelConfig, native_size, parse_triple
from camlens.classifier.weights import load_weights, read_state_dict

__all__ = [
    "Classifier",
    "ModelConfig",
    "Opened",
    "adapt_user_input",
    "build_classifier",
    "load_weights",
    "native_size",
    "open_model",
    "own_layer_names",
    "parse_triple",
    "read_state_dict",
    "stated_size",
]
