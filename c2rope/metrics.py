"""Per-Token Distance (PTD, docs/design.md §6): how unevenly a text token's position sits
relative to the image tokens' positions.

For every text token t, take the Euclidean distances d(t, i) to all image tokens i and
their mean absolute deviation; PTD is the mean of that over text tokens. PTD = 0 means
each text token is equally far from every image token (no patch is favoured by its
position alone); the 1D raster order of a 3x3 image followed by text gives 20/9 = 2.22.
"""
from __future__ import annotations

import torch


def _as_positions(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a tensor or nested sequence of numbers, got {type(value).__name__}") from exc
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D [tokens, axes], got shape {tuple(value.shape)}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token with at least one axis, got shape {tuple(value.shape)}")
    value = value.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite (no NaN/Inf)")
    return value


def per_token_distance(image_pos, text_pos) -> float:
    """PTD = mean over text t of mean over image i of |d(t, i) - mean_i d(t, i)|.

    image_pos: [N_img, A] positions of the image tokens; text_pos: [N_txt, A] positions
    of the text tokens, A the number of position axes (1 for 1D RoPE, 3 for M-RoPE or
    C2RoPE triplets). Tensors or nested lists; computed in float64. Returns a float.
    """
    image = _as_positions("image_pos", image_pos)
    text = _as_positions("text_pos", text_pos)
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image_pos and text_pos must have the same number of axes, got {image.shape[1]} and {text.shape[1]}"
        )
    # Differences rather than torch.cdist, whose matrix-product shortcut is inexact.
    dist = (text[:, None, :] - image[None, :, :]).pow(2).sum(-1).sqrt()  # [N_txt, N_img]
    deviation = (dist - dist.mean(dim=1, keepdim=True)).abs().mean(dim=1)
    return float(deviation.mean())


__all__ = ["per_token_distance"]
