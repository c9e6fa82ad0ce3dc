"""Attention rollout: how much each patch token flows into the class token through the
attention of every layer, for transformers (ViT, DeiT, with registers).

The attention of the forward pass is read where it is computed: `F.scaled_dot_product_attention`
(timm, transformers' sdpa), whose probabilities are recomputed from its query and key, a
softmax over a (N, heads, T, T) score tensor (attention written out, transformers' "eager"),
and `F.multi_head_attention_forward` (nn.MultiheadAttention: torchvision's ViT), asked for
its weights. Both are caught by a
TorchFunctionMode alive for the one forward pass, as Guided Grad-CAM catches ReLUs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from camlens.cam.base import Engine, RawMaps
from camlens.cam.layers import capture
from camlens.cam.layout import logits_of

__all__ = ["AttentionRollout"]

_SOFTMAX = (torch.softmax, F.softmax, Tensor.softmax)


class _Attention(TorchFunctionMode):
    """Records each attention's probabilities, averaged over heads: (N, T, T) per call."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:  # nn.MultiheadAttention (torchvision's ViT)
            return self._multi_head(func, args, kwargs)
        out = func(*args, **kwargs)
        # each (N, heads, T, T) -> (N, T, T), averaged over the heads
        if func is F.scaled_dot_product_attention:
            self.maps.append(_sdpa_probs(*args, **kwargs).mean(1))
        elif func in _SOFTMAX and _square(out):  # (N, heads, T, T): attention probabilities
            self.maps.append(out.detach().float().mean(1))
        return out

    def _multi_head(self, func, args, kwargs):
        """F.multi_head_attention_forward asked for its weights, which it then computes
        itself (the mode cannot see inside it); the caller gets what it asked for."""
        if kwargs.get("need_weights", True):
            out, weights = func(*args, **kwargs)
            self.maps.append(weights.detach().float().mean(1) if weights.ndim == 4 else weights)
            return out, weights
        asked = {**kwargs, "need_weights": True, "average_attn_weights": True}
        out, weights = func(*args, **asked)
        self.maps.append(weights.detach().float())  # (N, T, T), averaged over the heads
        return out, None


def _square(out: Any) -> bool:
    return isinstance(out, Tensor) and out.ndim == 4 and out.shape[-1] == out.shape[-2]


def _sdpa_probs(
    query: Tensor,
    key: Tensor,
    value: Tensor | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    **_: Any,
) -> Tensor:
    """softmax(q k^T scale + mask): the probabilities `scaled_dot_product_attention` used
    (without its dropout, which eval mode turns off)."""
    q, k = query.detach().float(), key.detach().float()
    scores = q @ k.transpose(-2, -1) * (scale or 1 / math.sqrt(q.shape[-1]))  # (N, h, T, T)
    if is_causal:
        t = scores.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return scores.softmax(-1)


class AttentionRollout(Engine):
    """Attention rollout, Abnar & Zuidema 2020 (ACL, "Quantifying Attention Flow in
    Transformers", arXiv:2005.00928), section 3.

    R = A~_L ... A~_1, A~_l = rownorm(0.5 A_l + 0.5 I), A_l layer l's attention averaged
    over heads; the map is the class token's row of R over the patch tokens.

    The identity stands for the residual connection (the paper's 0.5 W_att + 0.5 I, rows
    renormalised); A~_1 first, each later layer multiplied on the left. Every attention of
    the forward pass over the named layer's T tokens takes part (the paper rolls out all
    layers); attention over other token counts (Swin's windows) is not a ViT's and is left
    out. With no prefix token (a ViT pooled by the mean) each place's flow is averaged over
    the rows instead of read from the class token's. Class-agnostic, as Eigen-CAM is: every
    target gets the same map. The layer says where the tokens and their grid are (its
    layout must be tokens); a model without attention over them is refused in one line.
    """

    name = "rollout"
    tokens_only = True  # reads attention over tokens: refuses a CNN's maps (TOKEN_METHODS)

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        readings: dict = {}
        recorder = _Attention()
        # grad mode on: nn.MultiheadAttention takes its fused C++ path, which shows no
        # attention, under no_grad; nothing here is differentiated
        with (
            torch.enable_grad(),
            capture(self.model, self.layers, False, self.config.layout, readings),
            self._forward_context(images.device),
            recorder,
        ):
            logits = logits_of(self.model(images))
        targets = [self._resolve(spec, logits, want_scores=False) for spec in specs]
        maps = [self._rollout(name, *readings[name], recorder.maps) for name in self.layers]
        return RawMaps(logits.detach().float(), targets, [list(maps) for _ in targets])

    def _rollout(self, name: str, reading, output: Tensor, attentions: list[Tensor]) -> Tensor:
        """(N, h, w): the flow from each patch token to the class token (or to all tokens)."""
        if reading.layout != "tokens":
            raise ValueError(
                f"rollout reads a transformer's attention over its tokens; layer {name!r} is "
                f"{reading.layout}: name a token layer (a ViT block) with --layer"
            )
        n, t = output.shape[:2]
        flows = [a for a in attentions if a.shape == (n, t, t)]
        if not flows:
            raise ValueError(
                f"rollout found no attention over the {t} tokens of layer {name!r} in the "
                "forward pass (it reads F.scaled_dot_product_attention and softmax): use a "
                "gradient method there"
            )
        eye = torch.eye(t, device=flows[0].device)
        rollout = eye.expand(n, t, t)
        for attention in flows:  # A~_l = rownorm(0.5 A_l + 0.5 I); R <- A~_l R
            mixed = 0.5 * attention + 0.5 * eye
            rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
        prefix, (h, w) = reading.prefix, reading.resolution
        flow = rollout[:, 0, prefix:] if prefix else rollout.mean(1)  # (N, T, T) -> (N, h*w)
        return flow.reshape(n, h, w)
