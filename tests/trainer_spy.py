"""Record what a transformers/TRL Trainer computes, without changing it: the first batch
and loss of training and of evaluation, as the trainer's own `compute_loss` saw them.

The spy wraps the trainer instance's `compute_loss` (the method every Trainer subclass
routes its loss through); it clones the inputs BEFORE the call, since trainers add keys
to and pop keys from the dict they pass on."""
import copy

import torch


class LossSpy:
    def __init__(self, trainer):
        self.train = []  # (inputs, loss) per training micro-batch, in order
        self.eval = []
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            kept = {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in inputs.items()}
            out = original(model, inputs, *args, **kwargs)
            loss = out[0] if isinstance(out, tuple) else out
            (self.train if model.training else self.eval).append((kept, loss.detach().float().clone()))
            return out

        trainer.compute_loss = compute_loss

    def first_train(self):
        assert self.train, "the trainer computed no training loss"
        return self.train[0]


def model_inputs(batch):
    """The batch as a plain forward takes it: trainer-only keys dropped."""
    return {k: v for k, v in batch.items() if k not in ("use_cache", "num_items_in_batch")}


def forward_loss(model, batch, autocast_dtype=None, training=True):
    """`model(**batch).loss` in the trainer's mode, without gradients, optionally under
    CPU autocast as the Trainer's bf16 runs."""
    model.train(training)
    ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        return model(**model_inputs(batch)).loss.float()
