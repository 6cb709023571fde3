"""One step of HF `Trainer` + DeepSpeed ZeRO-{2,3} on CPU with a c2rope-patched tiny LLaVA,
run by tests/test_trainer_deepspeed.py under `torchrun --nproc_per_node 2` (as LLaVA's
scripts launch it with the `deepspeed` launcher; DS_ACCELERATOR=cpu, gloo).

    torchrun --nproc_per_node 2 tests/deepspeed_train.py STAGE OUT.json

Rank 0 writes {"trainer": the loss the Trainer computed on its first batch, "patched":
c2rope's forward on that batch outside the trainer, "unpatched": the plain forward}."""
import copy
import json
import os
import sys

import torch

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]  # these tests' helpers and this checkout's c2rope

import transformers  # noqa: E402

import c2rope  # noqa: E402
from trainer_spy import LossSpy, forward_loss  # noqa: E402


def main(stage, out):
    seed = int(os.environ.get("C2ROPE_TEST_SEED", "0")) % 2**31
    torch.manual_seed(seed)  # the same model and data on both ranks
    from test_hf_common import batch_with_images
    from test_hf_llava import tiny_llava

    model = tiny_llava("sdpa").train()
    with torch.no_grad():  # larger weights than the 0.02 init, so positions move the loss
        for name, p in model.named_parameters():
            if "language_model" in name and "layers" in name and p.dim() == 2:
                p.normal_(0, 0.3)
    plain = copy.deepcopy(model)
    patched = copy.deepcopy(model)
    c2rope.patch_model(patched, c2rope.C2RoPEConfig())
    c2rope.patch_model(model, c2rope.C2RoPEConfig())  # before the Trainer, as users do

    rows = []
    for _ in range(4):
        ids, mask, _ = batch_with_images(1, 30, [[(3, 4, 4)]])
        labels = ids.masked_fill(ids == model.config.image_token_id, -100)
        rows.append(dict(input_ids=ids[0], attention_mask=mask[0], labels=labels[0],
                         pixel_values=torch.randn(3, 8, 8)))

    zero = {"stage": stage}
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    ds_config = {"train_micro_batch_size_per_gpu": 2,
                 "gradient_accumulation_steps": 1, "zero_optimization": zero,
                 "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}}
    args = transformers.TrainingArguments(
        output_dir=os.path.join(os.path.dirname(out), "out"), max_steps=1, per_device_train_batch_size=2,
        learning_rate=0.0, report_to="none", save_strategy="no", deepspeed=ds_config, ddp_backend="gloo",
        dataloader_num_workers=0, seed=seed)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   callbacks=[c2rope.C2RoPECallback()])
    spy = LossSpy(trainer)
    trainer.train()
    batch, loss = spy.first_train()
    if trainer.args.process_index == 0:
        result = dict(trainer=loss.item(), patched=forward_loss(patched, batch).item(),
                      unpatched=forward_loss(plain, batch).item(),
                      engine=type(trainer.model_wrapped).__name__, world=trainer.args.world_size,
                      dist=torch.distributed.is_initialized() and torch.distributed.get_world_size(),
                      dp=getattr(trainer.model_wrapped, "dp_world_size", None),
                      distributed_type=str(trainer.accelerator.distributed_type))
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
