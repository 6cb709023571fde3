"""The one path every patched decoder takes, on every transformers line:

    entry points        -> the top-level model, the inner multimodal model (LlavaModel &
                           co) and the decoder each open a call frame (entry.py): raw
                           input_ids, `visual_layout=`, the path the call took
    decoder pre-hook    -> plan (state.py: spans, triplet positions)
                        -> deliver (frame.positions for the rotary code, the mask in
                           the attention_mask argument: masks.py)
                        -> the release's own forward
    decoder post-hook   -> the cache remembers the spans for the next step
    rotary code         -> reads frame.positions: C2RotaryAdapter (4.57 / 5.x, one
                           rotary module per decoder) or legacy_apply_rotary_pos_emb
                           (4.37, rotary inside every attention layer)

Text-only calls leave positions and masks exactly as transformers computes them. After
patching, `verify_patch` runs one tiny forward and checks that every attention layer
really rotates by c2rope's positions and receives c2rope's mask; `checks.py` checks the
first training forward and the paths `c2rope.verify` probes.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Callable, Optional

import torch
from torch import nn

from . import context
from .introspect import cache_argument, output_cache, parameter_names
from .masks import decoder_mask, dense_mask, legacy_mask
from . import checks
from .record import Disarmable, PatchRecord, Unpicklable, rebound_namespace
from .state import C2RoPEState

ROTARY_GLOBAL = "apply_rotary_pos_emb"


def to_kwargs(names, args, kwargs) -> dict:
    """Positional arguments folded into the keyword dict."""
    if len(args) > len(names):
        raise TypeError(f"forward() takes {len(names)} positional arguments but {len(args)} were given")
    bound = dict(zip(names, args))
    duplicate = set(bound) & set(kwargs)
    if duplicate:
        raise TypeError(f"forward() got multiple values for {sorted(duplicate)}")
    bound.update(kwargs)
    return bound


# ---------------------------------------------------------------- decoder forward

class Delivery:
    """How a transformers line gets positions and masks to its layers (4.57 / 5.x: the
    rotary adapter reads the call frame; nothing to add to the arguments)."""

    def __init__(self, decoder: nn.Module):
        self.names = parameter_names(decoder.forward)
        self.cache_name = cache_argument(decoder.forward)

    def mask(self, state, plan, decoder, cache, q_len, dtype, device):
        return decoder_mask(state, plan, decoder.config, cache, q_len, dtype, device)

    def deliver(self, bound: dict, plan, state, past: int) -> None:
        pass

    def positions_reached(self, attention: nn.Module, kwargs: dict, frame) -> bool:
        """Whether an attention layer's arguments carry the cos/sin of c2rope's
        positions for this call (the rotary adapter noted them on the frame)."""
        received = kwargs.get("position_embeddings")
        tables = frame.tables if frame is not None else None
        if frame is None or frame.positions is None or tables is None or not isinstance(received, (tuple, list)):
            return False
        return all(same_tensor(a, b) for a, b in zip(received[:2], tables[:2]))

    def mask_reached(self, kwargs: dict, frame) -> bool:
        return _same_mask(kwargs.get("attention_mask"), frame.mask)


class LegacyDelivery(Delivery):
    """4.37 applies RoPE inside every layer from the `position_ids` each layer receives,
    and gradient checkpointing recomputes a layer from its saved arguments, outside any
    call frame (reentrant checkpointing even passes detached copies). So the triplets
    travel as float [B, q, 3] `position_ids`, registered by their storage with the
    model's C2RotaryEmbedding and a table cache: every layer, and every recomputation,
    finds the same ones. The entry dies with the positions tensor."""

    def __init__(self, decoder: nn.Module, rope: nn.Module):
        super().__init__(decoder)
        self.rope = rope

    def mask(self, state, plan, decoder, cache, q_len, dtype, device):
        return legacy_mask(state, plan, decoder.config, q_len, dtype)

    def deliver(self, bound: dict, plan, state, past: int) -> None:
        positions = plan.positions
        if positions is None and state.config.text_spatial == "zero":
            positions = text_rotary_positions(_hf_position_ids(bound.get("position_ids"), past, plan.total_len - past,
                                                         bound), state)
        if positions is not None:
            positions = positions.contiguous().clone()  # a storage of our own to register
            _register_legacy_positions(positions, self.rope)
            bound["position_ids"] = positions

    def positions_reached(self, attention: nn.Module, kwargs: dict, frame) -> bool:
        # 4.37 rotates inside the layer: the triplets must arrive as its position_ids, and
        # the layer must look up c2rope's apply_rotary_pos_emb.
        forward = vars(attention).get("forward")
        return (frame is not None and frame.positions is not None and _legacy_entry(kwargs.get("position_ids")) is not None
                and getattr(forward, "armed", False))

    def mask_reached(self, kwargs: dict, frame) -> bool:
        # 4.37 inverts the 0/1 mask it is given into an additive one
        received, delivered = kwargs.get("attention_mask"), frame.mask
        if not isinstance(received, torch.Tensor) or not isinstance(delivered, torch.Tensor):
            return False
        return received.shape == delivered.shape and bool(torch.equal(received == 0, delivered != 0))


_LEGACY_POSITIONS: dict = {}  # data_ptr of delivered triplets -> (rope, {(dtype, device): (cos, sin)})


def _register_legacy_positions(positions: torch.Tensor, rope: nn.Module) -> None:
    pointer = positions.data_ptr()
    _LEGACY_POSITIONS[pointer] = (rope, {})
    weakref.finalize(positions, _LEGACY_POSITIONS.pop, pointer, None)


@torch.compiler.disable
def _legacy_entry(position_ids):
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 3 or not position_ids.is_floating_point():
        return None
    return _LEGACY_POSITIONS.get(position_ids.data_ptr())


def _hf_position_ids(position_ids, past: int, q_len: int, bound) -> torch.Tensor:
    """What 4.37's decoder uses when no position_ids are given: past ... past + q - 1."""
    if position_ids is not None:
        return position_ids
    reference = bound.get("input_ids") if bound.get("input_ids") is not None else bound.get("inputs_embeds")
    return torch.arange(past, past + q_len, device=reference.device).unsqueeze(0)


@torch.compiler.disable
def _plan(state, frame, bound, cache, batch, q_len, device):
    # Data-dependent Python (span search, layout building): kept out of compiled graphs.
    return state.plan(frame=frame, input_ids=bound.get("input_ids"), embeds=bound.get("inputs_embeds"),
                      attention_mask=bound.get("attention_mask"), cache=cache, batch=batch, q_len=q_len,
                      device=device, position_ids=bound.get("position_ids"),
                      cu_seq_lens=bound.get("cu_seq_lens_q"), cu_seq_lens_k=bound.get("cu_seq_lens_k"))


class DecoderHooks(Unpicklable):
    """The decoder's forward pre-hook and always-called forward hook (see entry.py for
    why hooks, not a forward wrapper). The pre-hook plans the call and hands the
    decoder c2rope's mask (as its attention_mask argument) and positions (on the
    frame, for the rotary code); the post-hook lets the cache remember the spans.
    Deep copies of a patched model copy these objects, with the copy's modules."""

    def __init__(self, state: C2RoPEState, decoder: nn.Module, delivery: "Delivery", attentions, name: str):
        self.state = state
        self.decoder = decoder
        self.delivery = delivery
        self.attentions = list(attentions)
        self.name = name

    def pre(self, module, args, kwargs):
        layout = kwargs.pop("visual_layout", None)
        delivery = self.delivery
        bound = to_kwargs(delivery.names, args, kwargs)
        frame = context.open_frame(self.state, module, self.name, visual_layout=layout)
        input_ids, embeds = bound.get("input_ids"), bound.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            return (), bound  # transformers raises its own error
        batch, q_len = reference.shape[:2]
        cache = bound.get(delivery.cache_name) if delivery.cache_name else None
        plan = _plan(self.state, frame, bound, cache, batch, q_len, reference.device)
        checks.check_images_found(self.state, module, frame, plan)
        if self.state.needs_mask(plan, getattr(module.config, "_attn_implementation", None)):
            dtype = embeds.dtype if embeds is not None else module.get_input_embeddings().weight.dtype
            frame.mask = delivery.mask(self.state, plan, module, cache, q_len, dtype, reference.device)
            bound["attention_mask"] = frame.mask
        frame.positions = plan.positions
        frame.plan = plan
        frame.cache = cache
        delivery.deliver(bound, plan, self.state, plan.total_len - q_len)
        checks.start_training_check(self.state, module, frame, self.attentions, delivery)
        return (), bound

    def post(self, module, args, kwargs, output):
        frame = context.close_frame(self.state, module)
        if frame is None or frame.plan is None:
            return None
        if frame.check is not None:
            frame.check.finish(output is not None)
        if output is not None:  # None: the forward raised
            returned = output_cache(output)
            self.state.finish(returned if returned is not None else frame.cache, frame.plan)
        return None


def hook_decoder(record: PatchRecord, decoder: nn.Module, state: C2RoPEState, delivery: Delivery, attentions,
                 name: str) -> None:
    hooks = DecoderHooks(state, decoder, delivery, attentions, name)
    record.add_hooks(decoder, hooks.pre, hooks.post)
    record.entry_points.append((name, decoder))
    record.delivery = delivery


# ---------------------------------------------------------------- rotary code

class C2RotaryAdapter(Disarmable, nn.Module):
    """Stands in for a 4.57 / 5.x decoder's `rotary_emb`: returns C2RoPE cos/sin for the
    positions of the running call when it holds images, else plain RoPE of HF's own
    position_ids (the same numbers as the original module). The original module stays
    a child (`original`) so it follows `.to()` and comes back unchanged on unpatch."""

    def __init__(self, original: nn.Module, rope: nn.Module, state: C2RoPEState):
        super().__init__()
        self.original = original
        self.rope = rope
        self.state = state

    def forward(self, x, position_ids=None, *args, **kwargs):
        if not self.armed:  # unpatched while something else held on to this module
            return self.original(x, position_ids, *args, **kwargs)
        positions = context.current_positions(self.state)
        if positions is None:
            return self.rope(x, text_rotary_positions(position_ids, self.state))
        tables = self.rope(x, positions)
        context.note_tables(self.state, tables)
        return tables


def text_rotary_positions(position_ids: torch.Tensor, state: C2RoPEState) -> torch.Tensor:
    if state.config.text_spatial != "zero":
        return position_ids
    # text_spatial="zero": text is (m, 0, 0), not plain RoPE.
    m = position_ids.to(torch.float32)
    return torch.stack([m, torch.zeros_like(m), torch.zeros_like(m)], dim=-1)


def legacy_apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """4.37's `apply_rotary_pos_emb(q, k, cos, sin, position_ids)`, on c2rope's kernel:
    HF's own gathered tables for integer position_ids (text), C2RoPE tables for the
    triplets `LegacyDelivery` hands over (built once per forward, shared by the layers)."""
    from ..rotary import apply_rotary_pos_emb as fused

    entry = _legacy_entry(position_ids)
    if entry is None:
        return fused(q, k, cos, sin, position_ids, unsqueeze_dim=unsqueeze_dim)
    rope, tables = entry
    key = (q.dtype, q.device)
    if key not in tables:
        tables[key] = rope(q, position_ids)
    cos, sin = tables[key]
    return fused(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


# ---------------------------------------------------------------- verification

def verify_patch(decoder: nn.Module, attentions, state: C2RoPEState) -> None:
    """One tiny forward (1 row: 2 text tokens, a 2x2 image, 2 text tokens) that checks
    every attention layer rotates by c2rope's positions and receives c2rope's mask.
    RuntimeError naming the first layer that does not."""
    from ..layout import VisualLayout

    weight = next(decoder.parameters(), None)
    if weight is None or weight.device.type == "meta":
        warnings.warn("c2rope: the model has no materialised weights (meta device); the patch was not "
                      "verified by a probe forward", stacklevel=3)
        return
    seq = 8
    layout = VisualLayout.from_spans([[(2, 2, 2)]], seq, device=weight.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    embeds = torch.randn(1, seq, decoder.config.hidden_size, generator=generator).to(weight.device, weight.dtype)
    seen = {id(a): {"calls": 0, "rotated": False, "mask": None, "delivered": None} for a in attentions}
    running = []

    def pre_hook(module, args, kwargs):
        running.append(module)
        entry = seen[id(module)]
        entry["mask"] = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
        entry["delivered"] = context.current(state).mask

    def post_hook(module, args, kwargs, output):
        running.pop()

    from ..positions import build_position_ids

    positions = build_position_ids(layout, state.config)
    adapter = getattr(decoder, "rotary_emb", None)
    # 4.57 / 5.x: the tables every layer gets must be the adapter's for these positions.
    expected_cos = adapter.rope(embeds, positions)[0] if isinstance(adapter, C2RotaryAdapter) else None

    def counting(original):
        def apply(q, k, cos, sin, *args, **kwargs):
            if running:
                entry = seen[id(running[-1])]
                entry["calls"] += 1
                if expected_cos is not None:
                    entry["rotated"] = cos.shape == expected_cos.shape and bool(torch.equal(cos, expected_cos))
                else:  # 4.37: the triplets must arrive as this layer's position_ids
                    position_ids = args[0] if args else kwargs.get("position_ids")
                    entry["rotated"] = _legacy_entry(position_ids) is not None
            return original(q, k, cos, sin, *args, **kwargs)
        return apply

    namespaces = {id(ns): ns for ns in (rebound_namespace(a) for a in attentions)}
    originals = {key: ns[ROTARY_GLOBAL] for key, ns in namespaces.items()}
    handles = []
    try:
        for key, ns in namespaces.items():
            ns[ROTARY_GLOBAL] = counting(originals[key])
        for attention in attentions:
            handles.append(attention.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(attention.register_forward_hook(post_hook, with_kwargs=True))
        padding = torch.ones(1, seq, dtype=torch.long, device=weight.device)
        with torch.no_grad(), context.call_frame(state, visual_layout=layout), probe_implementation(decoder.config):
            decoder(inputs_embeds=embeds, attention_mask=padding, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        for key, ns in namespaces.items():
            ns[ROTARY_GLOBAL] = originals[key]
    expected = None
    if state.config.mask != "causal":
        from .state import CallPlan

        plan = CallPlan(spans=layout.spans, total_len=seq, layout=layout, positions=positions)
        expected = dense_mask(state, plan, seq, seq)[0, 0]
    for index, attention in enumerate(attentions):
        entry = seen[id(attention)]
        name = f"layer {index} ({type(attention).__name__})"
        if entry["calls"] == 0:
            raise RuntimeError(f"c2rope: {name} never called {ROTARY_GLOBAL}: the patch would do nothing there")
        if not entry["rotated"]:
            raise RuntimeError(f"c2rope: {name} did not rotate by c2rope's positions")
        if expected is not None and not is_expected_mask(entry["mask"], entry["delivered"], expected):
            raise RuntimeError(f"c2rope: {name} did not receive c2rope's Chebyshev mask")


@contextlib.contextmanager
def probe_implementation(config):
    """flex_attention is compiled by transformers on first use: a probe of another shape
    would make the user's first real call recompile it with dynamic shapes (slower, and
    broken in some torch CPU releases). The probe checks routing, not the attention
    kernel, so flex models are probed through sdpa with the same mask path."""
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != "flex_attention":
        yield
        return
    config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        config._attn_implementation = implementation


def is_expected_mask(received, delivered, expected: torch.Tensor) -> bool:
    if received is None:
        return False
    if received is delivered or (isinstance(delivered, dict) and any(received is m for m in delivered.values())):
        return True
    if not isinstance(received, torch.Tensor) or received.dim() != 4:
        return False
    allowed = received[0, 0] if received.dtype == torch.bool else received[0, 0] == 0
    return allowed.shape == expected.shape and bool(torch.equal(allowed.cpu(), expected.cpu()))


def same_tensor(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.equal(a.to(b.dtype), b)))


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask == 0


def _same_mask(received, delivered) -> bool:
    """Whether the mask an attention layer received is the one c2rope handed the
    decoder (the same object, one of its per-layer-type masks, or the same entries)."""
    if received is None or delivered is None:
        return False
    candidates = list(delivered.values()) if isinstance(delivered, dict) else [delivered]
    if any(received is m for m in candidates):
        return True
    if not isinstance(received, torch.Tensor):
        return False
    return any(isinstance(m, torch.Tensor) and m.shape == received.shape
               and bool(torch.equal(_allowed(received), _allowed(m))) for m in candidates)
