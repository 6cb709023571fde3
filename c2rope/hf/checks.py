"""Checks that c2rope's positions and mask reach every attention layer where it matters:

- the first training forward with images (model.training, gradients on): temporary
  pre-hooks on the attention layers record what each one receives; the decoder's
  post-hook raises RuntimeError naming the first layer that did not get c2rope's
  positions or mask, and the call path. After one call passes, a model only checks that
  images given to it were found (a flag test);
- `AttentionWatch` is shared with `c2rope.verify` (verify.py), which probes the paths
  real calls take.

A patch that silently does nothing is the worst failure a patch library can have: these
checks turn it into an error at the first step of a training run.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from . import context


def describe_path(frame) -> str:
    path = getattr(frame, "path", ()) or ()
    return " -> ".join(path) if path else "(no c2rope entry point)"


class AttentionWatch:
    """Temporary forward pre-hooks on the attention layers: what each one received in
    its first call while the watch runs (c2rope's positions? its mask?)."""

    def __init__(self, state, attentions, delivery):
        self.state = state
        self.attentions = list(attentions)
        self.delivery = delivery
        self.seen: List[Optional[dict]] = [None] * len(self.attentions)
        self._handles = []

    def start(self) -> "AttentionWatch":
        for index, attention in enumerate(self.attentions):
            self._handles.append(attention.register_forward_pre_hook(self._hook(index), with_kwargs=True))
        return self

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        @torch.compiler.disable
        def record(module, args, kwargs):
            if self.seen[index] is None:
                frame = context.current(self.state)
                self.seen[index] = {
                    "frame": frame,
                    "positions": self.delivery.positions_reached(module, kwargs, frame),
                    "mask": frame is not None and frame.mask is not None
                    and self.delivery.mask_reached(kwargs, frame),
                }
        return record

    def failure(self, path: str, want_mask: bool, expected_positions: Optional[torch.Tensor] = None) -> Optional[str]:
        """The first layer that did not get c2rope's positions (and mask), as a message."""
        for index, (attention, entry) in enumerate(zip(self.attentions, self.seen)):
            name = f"layer {index} ({type(attention).__name__})"
            if entry is None:
                return f"{name} was never called on the path {path}"
            if not entry["positions"]:
                return f"{name} did not receive c2rope's positions on the path {path}"
            if expected_positions is not None:
                got = entry["frame"].positions
                if got is None or got.shape != expected_positions.shape or not torch.equal(
                        got.to(expected_positions.device, torch.float32), expected_positions.float()):
                    return f"{name} received positions other than the probe layout's on the path {path}"
            if want_mask and not entry["mask"]:
                return f"{name} did not receive c2rope's mask on the path {path}"
        return None


class TrainingCheck:
    """The check of one model's first training forward with images."""

    def __init__(self, state, frame, attentions, delivery):
        self.state = state
        self.frame = frame
        self.want_mask = frame.mask is not None
        self.watch = AttentionWatch(state, attentions, delivery).start()

    def finish(self, succeeded: bool) -> None:
        self.watch.stop()
        self.frame.check = None
        if not succeeded:
            return  # the forward raised its own error
        problem = self.watch.failure(describe_path(self.frame), self.want_mask)
        if problem is not None:
            raise RuntimeError(
                f"c2rope: first training forward with images: {problem}. The model would train without "
                "C2RoPE there; run c2rope.verify(model) and see docs/hf.md (where to patch)"
            )
        self.state.training_checked = True


def _training(module) -> bool:
    return bool(module.training) and torch.is_grad_enabled()


@torch.compiler.disable
def check_images_found(state, decoder, frame, plan) -> None:
    """Training with pixel values that reached the model while c2rope found no image in
    the call: the images would get 1-D RoPE and a causal mask. An error, not a silence."""
    if frame.images_given and not plan.has_images and _training(decoder):
        raise RuntimeError(
            "c2rope: pixel values reached the model on the path "
            f"{describe_path(frame)} but c2rope found no image in this training call (it finds images in "
            "input_ids by the image token id, or from visual_layout=): pass input_ids rather than "
            "inputs_embeds, or visual_layout="
        )


@torch.compiler.disable
def start_training_check(state, decoder, frame, attentions, delivery) -> None:
    """Arm the first-training-forward check for this call, if it is one."""
    if getattr(state, "training_checked", False) or not frame.plan.has_images or not _training(decoder):
        return
    frame.check = TrainingCheck(state, frame, attentions, delivery)
