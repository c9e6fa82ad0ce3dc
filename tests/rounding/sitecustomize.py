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
"""

import os

if os.environ.get("CAMLENS_TEST_ROUNDING"):
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
