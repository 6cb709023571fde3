"""Plain-PyTorch definitions of the rotary ops (cos_sin, rotary, rotary_backward).

Readable and float64-capable: the rotations are evaluated in float64 whatever the input
dtype and rounded once to the input's dtype, which is what the kernels promise.
"""
import torch

__all__ = ["rotate_half", "cos_sin_ref", "rotary_ref", "rotary_backward_ref"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's rotate_half: (x1, x2) -> (-x2, x1) over the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def cos_sin_ref(positions, inv_freq, axis, attention_scaling=1.0, dtype=torch.float32):
    """HF-format cos/sin [B, S, 2 * len(inv_freq)] from positions [B, S, A].

    angle[b, s, k] = positions[b, s, axis[k]] * inv_freq[k] in float32 (HF's product);
    float64 output evaluates cos/sin of that float32 angle in float64.
    """
    axis = torch.as_tensor(axis, dtype=torch.long, device=positions.device)
    freqs = positions.float()[..., axis] * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    if dtype == torch.float64:
        emb = emb.double()
    cos = emb.cos() * attention_scaling
    sin = emb.sin() * attention_scaling
    return cos.to(dtype), sin.to(dtype)


def _rotate(x, cos, sin, transpose):
    """Rotate the first R dims of x [B, H, S, D] by cos/sin [B or 1, S, R] in float64."""
    rot = cos.shape[-1]
    xd = x.double()
    c = cos.double().unsqueeze(1)
    s = sin.double().unsqueeze(1)
    head, tail = xd[..., :rot], xd[..., rot:]
    if not transpose:
        out = head * c + rotate_half(head) * s
    else:
        # d/dx of sum(g * (x * c + rotate_half(x) * s)) = g * c + rotate_half^T(g * s),
        # and rotate_half^T(y) = (y2, -y1) = -rotate_half(y).
        out = head * c - rotate_half(head * s)
    return torch.cat((out, tail), dim=-1).to(x.dtype)


def rotary_ref(q, k, cos, sin):
    """HF's apply_rotary_pos_emb on q [B, Hq, S, D] and k [B, Hk, S, D] (unsqueeze_dim=1),
    with partial rotary when cos/sin have fewer than D columns."""
    return _rotate(q, cos, sin, False), _rotate(k, cos, sin, False)


def rotary_backward_ref(grad_q, grad_k, cos, sin):
    """The gradient of rotary_ref with respect to q and k."""
    return _rotate(grad_q, cos, sin, True), _rotate(grad_k, cos, sin, True)
