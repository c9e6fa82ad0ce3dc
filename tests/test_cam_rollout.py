"""Attention rollout (camlens.cam.rollout) against the paper's recursion written out here, on a
toy two-block ViT whose attention goes through F.scaled_dot_product_attention or a softmax."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.cam import AttentionRollout, create


class Block(nn.Module):
    def __init__(self, dim, heads, eager):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.heads, self.eager = heads, eager

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.eager:  # attention written out: (N, heads, T, T)
            attn = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
            y = attn @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return x + y.transpose(1, 2).reshape(n, t, c)


class TinyViT(nn.Module):
    """32 px, 8 px patches: a 4x4 grid after a class token and one register."""

    num_prefix_tokens = 2

    def __init__(self, eager=False, dim=8, heads=2):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.prefix = nn.Parameter(torch.randn(1, 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, eager) for _ in range(2)))
        self.head = nn.Linear(dim, 3)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2)  # (N, C, 4, 4) -> (N, 16, C)
        x = self.blocks(torch.cat([self.prefix.expand(len(images), -1, -1), x], 1))
        return self.head(x[:, 0])


def rollout_by_hand(model, images):
    """The paper's recursion, image by image: A~ = rownorm(0.5 A + 0.5 I), R_l = A~_l R_{l-1},
    the attention recomputed from each block's own q and k."""
    maps = []
    for image in images:
        x = model.patch(image[None]).flatten(2).transpose(1, 2)
        x = torch.cat([model.prefix, x], 1)[0]  # (T, C)
        rollout = torch.eye(x.shape[0])
        for block in model.blocks:
            qkv = block.qkv(block.norm(x)).reshape(x.shape[0], 3, block.heads, -1)
            q, k = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1)  # (heads, T, d)
            attn = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1).mean(0)
            mixed = 0.5 * attn + 0.5 * torch.eye(x.shape[0])
            rollout = (mixed / mixed.sum(1, keepdim=True)) @ rollout
            x = block(x[None])[0]
        maps.append(rollout[0, 2:].reshape(4, 4))  # the class token's row over the patches
    return torch.stack(maps).detach()


@pytest.mark.parametrize("eager", [False, True])
def test_rollout_is_the_papers_recursion(eager):
    """Planted, each red then reverted: the residual identity left out (A~ = A); the layers
    multiplied in the wrong order (R A~); the register read as a place (prefix 1)."""
    model = TinyViT(eager).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = rollout_by_hand(model, images)
    assert expected.flatten(1).std(1).min() > 0  # maps with places: the test can fail
    with torch.no_grad():
        result = AttentionRollout(model, "blocks.1", normalize="none").explain(images)
    torch.testing.assert_close(result.low_res[0], expected, atol=1e-5, rtol=1e-4)
    pair = create("rollout", model, "blocks.1").explain_pair(images, torch.tensor([0, 1, 2]))
    assert torch.equal(pair.pred.maps, pair.label.maps)  # class-agnostic


def test_rollout_refuses_a_map_layer_in_one_line():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(ValueError, match=r"layer '0' is nchw: name a token layer") as e:
        create("rollout", model, "0")(torch.rand(1, 3, 16, 16))
    assert "\n" not in str(e.value)
