"""The families wing of c2rope.hf: one module per model family, each holding what is
particular to that family (how to find its parts, what it refuses, its patch-time
checks), on top of the corridor every patch goes through (pipeline, masks, state,
record, context, introspect, registry).

A family registers its patcher with `c2rope.hf.registry.register_patcher` and is
loaded through one line of `_FAMILY_MODULES` in c2rope/hf/__init__.py: that table is the
one list of families. Members so far:

- qwen3_5.py: Qwen3.5, dense and MoE (model types qwen3_5, qwen3_5_moe).
- internvl.py: InternVL (internvl), one grid per tile (docs/tiles.md).
- llava_onevision1_5.py: LLaVA-OneVision-1.5 (llava_onevision1_5), one grid per image or frame.

The older families (c2rope/hf/modern.py, llava_next.py, qwen_vl.py and the qwen_*
modules) move here in a later change.
"""
