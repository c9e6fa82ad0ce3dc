"""The sanity verdict: one named state per method, from the measurements of `sanity_check`.

Rules, read in this order (the first that fails names the state; every failed rule is listed):
- "uninformative": most maps on the trained model are flat, or the method disagrees with
  itself run twice on the same model (mean self-agreement below `min_self_agreement`): a fresh
  random map per call, a constant map.
- "model-blind": the maps decorrelate at no step of the cascade (mean similarity at or above
  `max_similarity` x the floor after every step), or their entropy does not move (eMPRT:
  |relative change| below `min_entropy_change`): an edge map of the input, a fixed centre blob.
  Any step counts, not only the last: a fully random ResNet still sees edges, and Grad-CAM's
  maps drift back to 0.59 on 4 shipped-model mistakes after decorrelating to 0.00 at the
  output layer. eMPRT asks for a *rise*; camlens reads it both ways, because rectified maps
  (Grad-CAM) of a random model get sparser, not noisier (-60% on the known-evidence model),
  and its line is low (0.2%): a map that ignores the model moves exactly 0, while real
  methods on the shipped model move 1-35%.
- "class-blind": the maps survive randomising the output layer (mean similarity after the first
  cascade step at or above `max_class_similarity` x the floor: still the same map), or the map
  of another class is the same map (Random Logit, the same line): Eigen-CAM, which never reads
  the class. The line is looser than `max_similarity` because a class's map is built from the
  same activations whatever the weights: Grad-CAM with a random output layer keeps 0.57 on the
  known-evidence model, Grad-CAM++ 0.89, LayerCAM 0.92, Eigen-CAM 1.00.
- "passes": none of the above.
Similarities are read against the method's own noise floor (its self-agreement, 1 for a
deterministic method), so a stochastic method is not failed for its own noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from camlens.metrics.sanity import SanityResult

__all__ = ["VERDICTS", "SanityRules", "SanityVerdict", "judge_sanity", "sanity_verdict"]

# state -> what it means, in one line (compare.json carries these for the report and the CLI)
VERDICTS = {
    "passes": "the maps change when the output layer and then the whole model are randomised, "
    "differ between classes and get noisier on a random model: they depend on what it learned",
    "class-blind": "the maps barely change when the output layer is randomised or another class "
    "is explained: they do not say why this class",
    "model-blind": "the maps stay alike, or get no noisier, when the whole model is randomised: "
    "they describe the image, not the model",
    "uninformative": "the maps are flat, or the method does not agree with itself when run "
    "twice: they carry no repeatable information",
}


@dataclass(frozen=True)
class SanityRules:
    """Thresholds of `sanity_verdict`; each is one rule's line between pass and fail."""

    # a step's maps have decorrelated once their mean similarity to the originals falls below
    # this fraction of the method's self-agreement (Adebayo et al. read Spearman against 0.5)
    max_similarity: float = 0.5
    # Random Logit: another class's maps at or above this fraction of the floor are the same map
    max_class_similarity: float = 0.8
    # a method whose two runs agree less than this (mean Spearman) repeats nothing
    min_self_agreement: float = 0.5
    # more than this fraction of flat maps on the trained model: nothing is shown
    max_flat_fraction: float = 0.5
    # eMPRT: |relative change| of mean map entropy from the trained to the random model
    min_entropy_change: float = 0.002

    def __post_init__(self) -> None:
        for name in ("max_similarity", "max_class_similarity", "min_self_agreement"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.max_flat_fraction < 1:
            raise ValueError(f"max_flat_fraction must be in [0, 1), got {self.max_flat_fraction}")


@dataclass(frozen=True)
class SanityVerdict:
    """Whether the maps depend on the model and the class, as one named state with reasons."""

    state: str  # one of VERDICTS
    failed: tuple[str, ...]  # every state whose rules failed, in the order above
    reasons: tuple[str, ...]  # every rule that failed, in words (empty when it passes)
    floor: float  # mean self-agreement: the similarity of the method with itself
    step_similarity: tuple[float, ...]  # mean similarity to the original maps after each step
    decorrelated: tuple[bool, ...]  # per step: below max_similarity x floor (any one will do)
    decorrelated_at: str | None  # first block after which the maps had decorrelated
    final_spearman: float  # mean similarity after the last step
    random_logit: float  # mean similarity of another class's maps
    entropy_rise: float  # (mean entropy, fully random) / (mean entropy, trained) - 1: eMPRT
    flat_fraction: float  # fraction of flat maps on the trained model

    @property
    def passed(self) -> bool:
        return self.state == "passes"

    @property
    def explanation(self) -> str:
        return VERDICTS[self.state]


def sanity_verdict(result: SanityResult, rules: SanityRules | None = None) -> SanityVerdict:
    """Judge a `SanityResult` by `rules` (module docstring): a state and the failed rules."""
    return judge_sanity(
        steps=result.steps,
        step_similarity=[float(v) for v in result.spearman.mean(1)],  # (S, N) -> S
        floor=float(result.self_agreement.mean()),
        random_logit=float(result.random_logit.mean()),
        entropy=(float(result.entropy[0].mean()), float(result.entropy[-1].mean())),
        flat_fraction=float(result.flat[0].float().mean()),
        rules=rules,
    )


def judge_sanity(
    steps: tuple[str, ...] | list[str],
    step_similarity: list[float],
    floor: float,
    random_logit: float,
    entropy: tuple[float, float],
    flat_fraction: float,
    rules: SanityRules | None = None,
) -> SanityVerdict:
    """The verdict from the image means alone (what a distributed compare sums over ranks):
    per-step similarity, self-agreement, Random Logit, mean entropy (trained, fully random)."""
    rules = rules or SanityRules()
    means = list(step_similarity)
    line = rules.max_similarity * max(floor, 0.0)
    decorrelated = tuple(m < line for m in means)
    first = next((name for name, d in zip(steps, decorrelated, strict=True) if d), None)
    before, after = entropy
    rise = after / before - 1 if before > 0 else 0.0
    failed: dict[str, list[str]] = {"uninformative": [], "model-blind": [], "class-blind": []}
    if flat_fraction > rules.max_flat_fraction:
        failed["uninformative"].append(f"{flat_fraction:.0%} of the maps are flat")
    if floor < rules.min_self_agreement:
        failed["uninformative"].append(f"two runs agree only {floor:.2f} (Spearman)")
    if not any(decorrelated):
        failed["model-blind"].append(
            f"at least {min(means):.2f} alike at every cascade step, {means[-1]:.2f} with the "
            f"whole model randomised (floor {floor:.2f})"
        )
    if abs(rise) < rules.min_entropy_change:
        failed["model-blind"].append(f"entropy moves {rise:+.1%} on a random model (eMPRT)")
    if means[0] >= rules.max_class_similarity * max(floor, 0.0):
        failed["class-blind"].append(
            f"still {means[0]:.2f} alike with {steps[0]} randomised (floor {floor:.2f})"
        )
    if random_logit >= rules.max_class_similarity * max(floor, 0.0):
        failed["class-blind"].append(f"another class's map is {random_logit:.2f} alike")
    state = next((s for s, why in failed.items() if why), "passes")
    return SanityVerdict(
        state=state,
        failed=tuple(s for s, why in failed.items() if why),
        reasons=tuple(r for why in failed.values() for r in why),
        floor=floor,
        step_similarity=tuple(means),
        decorrelated=decorrelated,
        decorrelated_at=first,
        final_spearman=means[-1],
        random_logit=random_logit,
        entropy_rise=rise,
        flat_fraction=flat_fraction,
    )
