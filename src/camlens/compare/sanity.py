"""The sanity checks of a compare: each method's cascade, Random Logit, entropy and floor.

Under torchrun each rank checks every world-th method; the image means and first-image maps
are summed over the ranks, and the verdict is judged from the means (`judge_sanity`), so every
rank's share reads the same as one process's.
"""

from __future__ import annotations

import torch

from camlens.compare.budget import Budget
from camlens.compare.job import CompareJob
from camlens.distributed import all_sum, rank, world_size
from camlens.evaluate import as_float_images
from camlens.metrics import cascade_order, judge_sanity, sanity_check

__all__ = ["run_sanity"]


def run_sanity(job: CompareJob, plan: Budget, bar) -> tuple[dict, dict]:
    """Each of `plan.sanity_methods`' checks at `plan.sanity_layer` on the first
    `plan.sanity_count` mistakes: method -> its numbers and named state, and method -> the
    first image's maps along the cascade. Under torchrun each rank runs every world-th method
    and the image means and first-image maps are summed over the ranks, as the score table is;
    the verdict is judged from the means. The engines are the job's, on the model or a
    randomised copy (seed + 1: another draw of a stochastic method's noise)."""
    model, methods, layer, seed = (
        job.model,
        plan.sanity_methods,
        plan.sanity_layer,
        job.plan.metric_seed,
    )
    count = plan.sanity_count
    images = as_float_images(job.data.test.images[job.subsets["mistakes"][:count]])
    images = images.to(job.device)  # (S, 3, H, W)
    targets = job.targets["mistakes"][:count].to(job.device)
    steps = len(cascade_order(model))
    h, w = images.shape[-2:]
    curves = torch.zeros(len(methods), 3, steps, dtype=torch.float64)  # spearman, std, ssim
    scalars = torch.zeros(len(methods), 5, dtype=torch.float64)  # floor, rl, H0, H1, flat
    maps = torch.zeros(len(methods), steps + 1, h, w)
    for i in range(rank(), len(methods), world_size()):
        method = methods[i]
        bar.set_postfix_str(f"sanity: {method} {layer}")
        result = sanity_check(
            model,
            images,
            targets,
            lambda m, method=method: job.engine(method, m, layer),
            generator=torch.Generator().manual_seed(seed),  # the CPU's draw on any device
            keep=1,
            # another draw of the noise for the stochastic methods; the rest read no seed
            make_twin=lambda m, method=method: job.engine(method, m, layer, seed + 1),
        )
        curves[i, 0] = result.spearman.mean(1).double().cpu()
        curves[i, 1] = result.spearman.std(1, unbiased=False).double().cpu()
        curves[i, 2] = result.ssim.mean(1).double().cpu()
        scalars[i] = torch.tensor(
            [
                float(result.self_agreement.mean()),
                float(result.random_logit.mean()),
                float(result.entropy[0].mean()),
                float(result.entropy[-1].mean()),
                float(result.flat[0].float().mean()),
            ],
            dtype=torch.float64,
        )
        maps[i] = result.maps[:, 0].cpu()  # (S + 1, H, W) of the first image
        bar.update(round(plan.sanity_cost[method]))
    all_sum(curves)
    all_sum(scalars)
    all_sum(maps)
    names = cascade_order(model)
    sanity = {}
    for i, method in enumerate(methods):
        floor, random_logit, before, after, flat = scalars[i].tolist()
        verdict = judge_sanity(
            names, curves[i, 0].tolist(), floor, random_logit, (before, after), flat
        )
        sanity[method] = {
            "layer": layer,
            "steps": names,
            "spearman": [float(v) for v in curves[i, 0]],
            "spearman_std": [float(v) for v in curves[i, 1]],
            "ssim": [float(v) for v in curves[i, 2]],
            "state": verdict.state,
            "explanation": verdict.explanation,
            "reasons": list(verdict.reasons),
            "failed": list(verdict.failed),
            "passed": verdict.passed,
            "floor": verdict.floor,
            "decorrelated": list(verdict.decorrelated),
            "decorrelated_at": verdict.decorrelated_at,
            "random_logit": verdict.random_logit,
            "entropy_rise": verdict.entropy_rise,
            "flat_fraction": verdict.flat_fraction,
            "final_spearman": verdict.final_spearman,
        }
    return sanity, {method: maps[i] for i, method in enumerate(methods)}
