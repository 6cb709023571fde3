"""The Llama family on transformers 4.57.x and 5.x: Llama, Mistral, Qwen2, and the
generic decoder patch (`patch_decoder`) that LLaVA and LLaVA-NeXT / OneVision reuse for
their language model (any decoder built the same way).

These releases compute cos/sin once per forward in the decoder's `rotary_emb` and pass
them to every attention layer, which calls the module-level `apply_rotary_pos_emb`.
Per instance (nothing in transformers' modules is touched, so unpatched models are
unaffected):
- `decoder.rotary_emb` becomes a `C2RotaryAdapter` around a c2rope
  `C2RotaryEmbedding.from_hf(original)` (same inv_freq and attention_scaling, so rope
  scaling carries over);
- each attention layer runs its class's forward (below its decorators, which still run)
  with `apply_rotary_pos_emb` bound to c2rope's fused kernel;
- forward hooks on the top-level model, the inner multimodal model and the decoder
  (entry.py, pipeline.DecoderHooks) find the images and deliver positions and mask on
  every path that runs the decoder.
What is found, and how, is read from the model (`introspect.py`), not assumed from one
release's source.
"""
from __future__ import annotations

from torch import nn

from ..introspect import uses_global
from ..entry import add_entry_points
from ..pipeline import ROTARY_GLOBAL, C2RotaryAdapter, Delivery, hook_decoder
from ..record import PatchRecord, bind_forward_with_globals
from ..registry import register_patcher
from ..state import C2RoPEState

MODEL_TYPES = ("llama", "mistral", "qwen2")
CHECK_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DOCS = "docs/hf.md"


def find_decoder(model: nn.Module) -> nn.Module:
    """The module holding `rotary_emb` and the decoder `layers` (LlamaModel & co)."""
    found = [
        m for m in model.modules()
        if isinstance(getattr(m, "rotary_emb", None), nn.Module) and isinstance(getattr(m, "layers", None), nn.ModuleList)
    ]
    if len(found) != 1:
        raise TypeError(
            f"c2rope: expected one decoder with `rotary_emb` and `layers` in {type(model).__name__}, "
            f"found {len(found)}"
        )
    return found[0]


def check_attention_layers(attentions, release_hint: str) -> None:
    for attention in attentions:
        if not uses_global(type(attention).forward, ROTARY_GLOBAL):
            raise TypeError(
                f"c2rope: {type(attention).__name__}.forward (below its decorators) does not call "
                f"{ROTARY_GLOBAL} in {release_hint}; this model family is not supported by the "
                "generic decoder patcher"
            )


def patch_decoder(model: nn.Module, record: PatchRecord, state: C2RoPEState, inner_spans=None) -> None:
    import transformers

    from ... import rotary as c2rope_rotary
    from ...rotary import C2RotaryEmbedding

    decoder = find_decoder(model)
    attentions = [layer.self_attn for layer in decoder.layers]
    check_attention_layers(attentions, f"transformers {transformers.__version__}")
    original_rotary = decoder.rotary_emb
    rope = C2RotaryEmbedding.from_hf(original_rotary, state.config)
    record.set_attr(decoder, "rotary_emb", C2RotaryAdapter(original_rotary, rope, state))
    for attention in attentions:
        bind_forward_with_globals(record, attention, {ROTARY_GLOBAL: c2rope_rotary.apply_rotary_pos_emb})
    add_entry_points(record, model, decoder, state, inner_spans)
    hook_decoder(record, decoder, state, Delivery(decoder), attentions, f"{type(decoder).__name__} (decoder)")
    record.probe = (decoder, attentions)


@register_patcher(*MODEL_TYPES)
def _patch_causal_lm(model, record, state):
    patch_decoder(model, record, state)
