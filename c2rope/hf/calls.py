"""Forward-wrapper plumbing shared by the patchers of both transformers lines."""
from __future__ import annotations

import inspect
from typing import Callable


def parameter_names(function: Callable):
    """Names of the parameters that can be passed positionally, in order."""
    return [
        name for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def to_kwargs(names, args, kwargs) -> dict:
    """Positional arguments folded into the keyword dict (precomputed names: no
    inspect.signature per call, which torch.compile would have to trace)."""
    if len(args) > len(names):
        raise TypeError(f"forward() takes {len(names)} positional arguments but {len(args)} were given")
    bound = dict(zip(names, args))
    duplicate = set(bound) & set(kwargs)
    if duplicate:
        raise TypeError(f"forward() got multiple values for {sorted(duplicate)}")
    bound.update(kwargs)
    return bound


def top_forward(original: Callable, state) -> Callable:
    """The model's top-level forward: accepts `visual_layout=` and shows the decoder the
    raw input_ids (multimodal models embed them before the decoder runs)."""
    names = parameter_names(original)
    position = names.index("input_ids") if "input_ids" in names else None

    def forward(*args, visual_layout=None, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and position is not None and len(args) > position:
            ids = args[position]
        state.pending_ids, state.pending_layout = ids, visual_layout
        try:
            return original(*args, **kwargs)
        finally:
            state.pending_ids, state.pending_layout = None, None

    # generate() validates its kwargs against inspect.signature(model.forward): show the
    # original parameters plus visual_layout (functools.wraps alone would hide it).
    signature = inspect.signature(original)
    parameters = list(signature.parameters.values())
    extra = inspect.Parameter("visual_layout", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(parameters) if p.kind == p.VAR_KEYWORD), len(parameters))
    forward.__signature__ = signature.replace(parameters=parameters[:at] + [extra] + parameters[at:])
    return forward
