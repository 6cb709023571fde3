"""A model family from outside c2rope (registered by tests/test_hf_families.py through
c2rope.hf.families.register_family): a Llama decoder under its own model_type, patched
by the generic decoder patch. It shows that a family is one module plus one table row,
and touches no corridor file."""
import transformers

from c2rope.hf.families.llama import patch_decoder
from c2rope.hf.registry import register_patcher

MODEL_TYPES = ("c2rope_toy",)
CHECK_CLASSES = {"c2rope_toy": "ToyForCausalLM"}
DOCS = "docs/code.md"
patched = []  # the models this family's patcher handled


class ToyConfig(transformers.LlamaConfig):
    model_type = "c2rope_toy"


class ToyForCausalLM(transformers.LlamaForCausalLM):
    config_class = ToyConfig


@register_patcher(*MODEL_TYPES)
def _patch_toy(model, record, state):
    patched.append(model)
    patch_decoder(model, record, state)
