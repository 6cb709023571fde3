"""`record.probe` of a Gemma patch (run by patch_model and c2rope.verify).

The generic probe compares every layer's cos/sin with one table; Gemma's two layer
types rotate with two different frequency sets, so this probe runs the same checks
per layer type:
1. on every entry point (the top-level model, the multimodal model, the text model),
   an 8-token prompt with a 2x2 image placed by `visual_layout=`: every attention layer
   must receive c2rope's triplets as the tables of its own layer type, and c2rope's
   mask (unless the mask is the model's own: mask="causal" or
   image_attention="bidirectional");
2. where c2rope rebinds the layers' `apply_rotary_pos_emb` to its fused kernel (Gemma
   3), the kernel must be called in every layer with exactly those tables.
RuntimeError naming the first layer and path that fail.
"""
from __future__ import annotations

import torch
from torch import nn

from ....layout import VisualLayout
from ....positions import build_position_ids
from ...checks import AttentionWatch, describe_path
from ...pipeline import ROTARY_GLOBAL, probe_implementation
from ...record import ReboundForward, rebound_namespace
from ...verify import probe_ids, probe_paths


class GemmaProbe:
    def __init__(self, base: nn.Module, record, text: nn.Module, attentions, delivery, rebound: bool,
                 keep_model_mask: bool):
        self.base = base
        self.record = record
        self.text = text
        self.attentions = list(attentions)
        self.delivery = delivery
        self.rebound = rebound
        self.keep_model_mask = keep_model_mask

    def __call__(self, state=None) -> None:
        state = self.record.state if state is None else state
        weight = next(self.text.parameters(), None)
        if weight is None or weight.device.type == "meta":
            return  # patch_model warns about unmaterialised weights itself
        ids = probe_ids(self.text, state, weight.device)
        layout = VisualLayout.from_spans([[(2, 2, 2)]], ids.shape[1], device=weight.device)
        expected = build_position_ids(layout, state.config)
        want_mask = state.config.mask != "causal" and not self.keep_model_mask
        for label, module in probe_paths(self.base, self.base, self.record):
            watch = AttentionWatch(state, self.attentions, self.delivery).start()
            counts = self._count_kernel_calls() if self.rebound else None
            try:
                with torch.no_grad(), probe_implementation(self.text.config):
                    module(input_ids=ids, attention_mask=torch.ones_like(ids), visual_layout=layout, use_cache=False)
            finally:
                watch.stop()
                if counts is not None:
                    counts.restore()
            reached = next((entry["frame"] for entry in watch.seen if entry is not None), None)
            path = f"{label} [{describe_path(reached)}]" if reached is not None else label
            problem = watch.failure(path, want_mask, expected)
            if problem is None and counts is not None:
                problem = counts.failure(path)
            if problem is not None:
                raise RuntimeError(f"c2rope.verify: {problem}; c2rope would do nothing there")

    def _count_kernel_calls(self) -> "_KernelCalls":
        return _KernelCalls(self.attentions)


class _KernelCalls:
    """Counts, per attention layer, the calls of its (rebound) apply_rotary_pos_emb and
    whether they used the position_embeddings the layer received."""

    def __init__(self, attentions):
        self.attentions = attentions
        self.running = []
        self.seen = {id(a): {"calls": 0, "same": True} for a in attentions}
        self.handles = []
        # only the layers running c2rope's rebound forward: the class's own globals are the
        # release module's, shared with every unpatched model
        self.rebound = {id(a) for a in attentions if isinstance(vars(a).get("forward"), ReboundForward)}
        self.namespaces = {id(ns): ns for ns in (rebound_namespace(a) for a in attentions if id(a) in self.rebound)}
        self.originals = {key: ns[ROTARY_GLOBAL] for key, ns in self.namespaces.items()}
        for key, ns in self.namespaces.items():
            ns[ROTARY_GLOBAL] = self._counting(self.originals[key])
        for attention in attentions:
            self.handles.append(attention.register_forward_pre_hook(self._enter, with_kwargs=True))
            self.handles.append(attention.register_forward_hook(self._leave, with_kwargs=True, always_call=True))

    def _enter(self, module, args, kwargs):
        self.running.append((module, kwargs.get("position_embeddings")))

    def _leave(self, module, args, kwargs, output):
        if self.running:
            self.running.pop()

    def _counting(self, original):
        def apply(q, k, cos, sin, *args, **kwargs):
            if self.running:
                module, received = self.running[-1]
                entry = self.seen[id(module)]
                entry["calls"] += 1
                entry["same"] = entry["same"] and isinstance(received, (tuple, list)) and cos is received[0] \
                    and sin is received[1]
            return original(q, k, cos, sin, *args, **kwargs)
        return apply

    def restore(self) -> None:
        for handle in self.handles:
            handle.remove()
        for key, ns in self.namespaces.items():
            ns[ROTARY_GLOBAL] = self.originals[key]

    def failure(self, path: str):
        for index, attention in enumerate(self.attentions):
            entry = self.seen[id(attention)]
            name = f"layer {index} ({type(attention).__name__})"
            if id(attention) not in self.rebound or entry["calls"] == 0:
                return f"{name} never called c2rope's {ROTARY_GLOBAL} on the path {path}"
            if not entry["same"]:
                return f"{name} rotated by tables other than its position_embeddings on the path {path}"
        return None
