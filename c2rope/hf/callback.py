"""`C2RoPECallback`: a transformers TrainerCallback that runs `c2rope.verify` on the
trainer's model when training begins (after the trainer, PEFT, accelerate and DeepSpeed
have wrapped it), so a patch that does not reach the attention layers stops the run
before its first step instead of training without C2RoPE.

    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         callbacks=[c2rope.hf.C2RoPECallback()])
"""
from __future__ import annotations

from transformers import TrainerCallback

from .verify import verify


class C2RoPECallback(TrainerCallback):
    """Verifies every c2rope patch in the trainer's model at `on_train_begin`
    (RuntimeError naming the layer and the path if c2rope does not reach it)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise RuntimeError("c2rope: C2RoPECallback was given no model at on_train_begin; call "
                               "c2rope.verify(trainer.model) yourself")
        verify(model)
        return control
