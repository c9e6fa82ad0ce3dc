"""Another CPU's rounding, on this one: every Python process of a test run that puts this folder
on PYTHONPATH (torchrun's workers and the suite's subprocesses too) loads it at start-up.

With CAMLENS_TEST_ROUNDING set, each convolution's and linear layer's output is scaled by
1 + eps, -1, 0 or +1 fp32 ulp of 1.0, fixed by the batch size, the thread count and the layer's
output shape (so the layers' skews partly cancel, as rounding's do):
what oneDNN does on a CPU whose kernels depend on them (an AMD EPYC where a Xeon gives the same
bits). Results that are exact by construction (the same ops on the same batches at the same
thread count) stay exact; results across layouts then differ in their last bits, as they do
there, and the tests must still pass:

    CAMLENS_TEST_ROUNDING=1 PYTHONPATH=tests/rounding python -m pytest -m layout

(It imports torch at every start-up, so the tests of a lazy `import camlens` fail under it: it
is for the layout tests. The whole suite under it, 2026-12-07: those 2 and one layout test the
audit had missed, test_explain_filters_by_label_and_pred, now toleranced.)

With CAMLENS_TEST_ROUNDING=tf32 it emulates a CUDA GPU's TF32 instead: each convolution's
input and weight are rounded to TF32's 10-bit mantissa (to nearest, ties away from zero, as
`cvt.rna.tf32.f32`), and so is the gradient that flows back into it, whenever
`torch.backends.cudnn.allow_tf32` is on (PyTorch's default, on a GPU as here); linear layers
likewise under `torch.backends.cuda.matmul.allow_tf32` (off by default). The sums stay fp32,
as on the tensor cores. CAMLENS_TEST_ROUNDING=tf32-always rounds whatever the flags say: what
a CUDA run would give if camlens did not turn TF32 off (cam/precision.py). Measured with
`python benchmarks/tf32_effect.py` (docs/performance.md), tested in tests/test_precision.py.
"""

import os

MODE = os.environ.get("CAMLENS_TEST_ROUNDING", "")

if MODE.startswith("tf32"):
    import torch
    import torch.nn.functional as F

    _conv2d, _linear = F.conv2d, F.linear

    def tf32(x: torch.Tensor) -> torch.Tensor:
        """fp32 -> the nearest TF32 value (10 mantissa bits; ties away from zero), as fp32."""
        if x.dtype != torch.float32:
            return x
        bits = x.detach().contiguous().view(torch.int32)
        return ((bits + 0x1000) & -0x2000).view(torch.float32).view(x.shape)

    class Operand(torch.autograd.Function):
        """An operand of the tensor cores: rounded going in, its gradient passed as it is."""

        @staticmethod
        def forward(ctx, x):
            return tf32(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    class Result(torch.autograd.Function):
        """A product's output: unchanged, but the gradient into it is an operand of the
        backward products (grad_input, grad_weight), so it is rounded."""

        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return tf32(grad)

    def _on(flag: bool) -> bool:
        return MODE == "tf32-always" or flag

    def conv2d(input, weight, *args, **kwargs):
        if not _on(torch.backends.cudnn.allow_tf32):
            return _conv2d(input, weight, *args, **kwargs)
        out = _conv2d(Operand.apply(input), Operand.apply(weight), *args, **kwargs)
        return Result.apply(out)

    def linear(input, weight, *args, **kwargs):
        if not _on(torch.backends.cuda.matmul.allow_tf32):
            return _linear(input, weight, *args, **kwargs)
        return Result.apply(_linear(Operand.apply(input), Operand.apply(weight), *args, **kwargs))

    F.conv2d, F.linear = conv2d, linear

elif MODE:
    import torch
    import torch.nn.functional as F

    _conv2d, _linear = F.conv2d, F.linear

    def _skewed(out: torch.Tensor, batch: int) -> torch.Tensor:
        # a function of the layout and the layer alone, never of the call's values or order
        key = hash((batch, torch.get_num_threads(), tuple(out.shape[1:]))) % 3
        return out * (1 + (key - 1) * 1.2e-7) if out.dtype == torch.float32 else out

    def conv2d(input, *args, **kwargs):
        return _skewed(_conv2d(input, *args, **kwargs), input.shape[0])

    def linear(input, *args, **kwargs):
        return _skewed(_linear(input, *args, **kwargs), input.shape[0] if input.ndim > 1 else 1)

    F.conv2d, F.linear = conv2d, linear
