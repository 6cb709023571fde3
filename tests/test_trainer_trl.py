"""c2rope inside TRL's SFTTrainer, driven as its users drive it: a tiny random VLM with its
processor, a prompt-completion dataset of PIL images, `SFTTrainer(...).train()`.

The check inside every run: the loss the trainer computed on its first batch equals the
patched model's own forward on that batch, computed outside the trainer from a copy of
the same weights (1e-6 in float32), and differs from the unpatched forward. Needs trl
(CI installs it: scripts/trainer_lane.sh); skipped without it."""
import copy

import pytest
import torch

trl = pytest.importorskip("trl")

import c2rope  # noqa: E402
import trainer_models  # noqa: E402
from trainer_spy import LossSpy, forward_loss, model_inputs  # noqa: E402

TOL = dict(atol=1e-6, rtol=1e-6)


def sft_config(tmp_path, **overrides):
    fields = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=0.0,
                  report_to="none", save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0,
                  bf16=False,  # TRL's own default is bf16=True; the float32 runs compare at 1e-6
                  gradient_checkpointing=False, max_length=None, seed=0)
    fields.update(overrides)
    return trl.SFTConfig(**fields)


def references(model):
    """(unpatched copy, patched copy) of `model`'s current weights, for outside forwards."""
    plain = copy.deepcopy(model)
    patched = copy.deepcopy(model)
    c2rope.patch_model(patched, c2rope.C2RoPEConfig())
    return plain, patched


def assert_patched_loss(loss, batch, plain, patched, tol=TOL, autocast_dtype=None, training=True):
    """The trainer's `loss` on `batch` is c2rope's, not the unpatched model's."""
    expected = forward_loss(patched, batch, autocast_dtype, training)
    unpatched = forward_loss(plain, batch, autocast_dtype, training)
    margin = tol["atol"] + tol["rtol"] * abs(expected.item())
    assert abs(expected.item() - unpatched.item()) > 3 * margin, (
        f"the test batch cannot tell patched from unpatched: {expected.item()} vs {unpatched.item()}")
    torch.testing.assert_close(loss, expected, **tol, msg=lambda m: (
        f"trainer loss {loss.item():.7f}, c2rope's forward {expected.item():.7f}, "
        f"unpatched {unpatched.item():.7f}: {m}"))


def train(model, processor, config, data, **trainer_kwargs):
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=processor,
                             **trainer_kwargs)
    spy = LossSpy(trainer)
    return trainer, spy


@pytest.mark.parametrize("order", ["patch_then_trainer", "trainer_then_patch"])
@pytest.mark.parametrize("kind", trainer_models.FAMILIES)
def test_sft_trains_with_c2rope(kind, order, tmp_path):
    model, processor = trainer_models.make(kind)
    plain, patched = references(model)
    if order == "patch_then_trainer":  # the order docs/hf.md shows
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
    trainer, spy = train(model, processor, sft_config(tmp_path), trainer_models.dataset(kind))
    if order == "trainer_then_patch":
        c2rope.patch_model(trainer.model, c2rope.C2RoPEConfig())
    trainer.train()
    batch, loss = spy.first_train()
    assert_patched_loss(loss, batch, plain, patched)


@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl"])
def test_sft_lora_save_and_reload(kind, tmp_path):
    """SFTTrainer wraps the patched model in PEFT (peft_config=...): the first step's loss is
    c2rope's; the saved adapter, loaded onto a fresh base and patched, gives the trained
    model's logits."""
    peft = pytest.importorskip("peft")
    model, processor = trainer_models.make(kind)
    plain, patched = references(model)
    base_state = copy.deepcopy(model.state_dict())
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    config = sft_config(tmp_path, max_steps=2, learning_rate=1e-2)
    trainer, spy = train(model, processor, config, trainer_models.dataset(kind), peft_config=lora)
    trainer.train()
    batch, loss = spy.first_train()  # LoRA B starts at zero: the first step sees the base model
    assert_patched_loss(loss, batch, plain, patched)

    trainer.save_model(str(tmp_path / "adapter"))
    fresh = type(model)(model.config)
    fresh.load_state_dict(base_state)
    reloaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    c2rope.patch_model(reloaded, c2rope.C2RoPEConfig())
    trained = trainer.model
    trained.eval()
    reloaded.eval()
    with torch.no_grad():
        want = trained(**model_inputs(batch)).logits
        got = reloaded(**model_inputs(batch)).logits
    assert not any("lora_B" in n and p.abs().max() == 0 for n, p in trained.named_parameters()), "LoRA did not train"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sft_full_save_and_reload(tmp_path):
    """A full fine-tune (weights move), `save_model`, `from_pretrained`, patch: the same
    logits; the checkpoint holds exactly the model's own weights (nothing of c2rope's)."""
    kind = "qwen3_vl"
    model, processor = trainer_models.make(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    config = sft_config(tmp_path, max_steps=2, learning_rate=1e-2)
    trainer, spy = train(model, processor, config, trainer_models.dataset(kind))
    trainer.train()
    trainer.save_model(str(tmp_path / "full"))
    reloaded, info = type(model).from_pretrained(str(tmp_path / "full"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not c2rope.hf.is_patched(reloaded)  # a checkpoint is plain weights: patch after loading
    c2rope.patch_model(reloaded, c2rope.C2RoPEConfig())
    batch, _ = spy.train[-1]
    trainer.model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**model_inputs(batch)).logits, trainer.model(**model_inputs(batch)).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava_next", "qwen3_vl"])
def test_sft_gradient_checkpointing_and_eval(kind, tmp_path):
    """TRL's default gradient checkpointing, and evaluation during training: the training
    loss and the eval loss are both c2rope's."""
    model, processor = trainer_models.make(kind)
    plain, patched = references(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    config = sft_config(tmp_path, max_steps=2, gradient_checkpointing=True, eval_strategy="steps", eval_steps=1,
                        per_device_eval_batch_size=2)
    trainer, spy = train(model, processor, config, trainer_models.dataset(kind),
                         eval_dataset=trainer_models.dataset(kind, rows=2))
    trainer.train()
    batch, loss = spy.first_train()
    assert_patched_loss(loss, batch, plain, patched)
    assert spy.eval, "no evaluation ran during training"
    eval_batch, eval_loss = spy.eval[0]
    assert_patched_loss(eval_loss, eval_batch, plain, patched, training=False)
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert logged and abs(logged[0] - eval_loss.item()) < 1e-5  # one eval batch: its loss is the metric


@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl"])
def test_sft_bf16(kind, tmp_path):
    """`bf16=True` (TRL's default) on CPU: the Trainer runs the forward under bf16 autocast;
    the loss is c2rope's forward under the same autocast (the same ops: 1e-5), not the
    unpatched one."""
    model, processor = trainer_models.make(kind)
    plain, patched = references(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    trainer, spy = train(model, processor, sft_config(tmp_path, bf16=True), trainer_models.dataset(kind))
    trainer.train()
    batch, loss = spy.first_train()
    # The same ops under the same autocast agree to ~5e-7; a tight tolerance keeps the
    # patched-vs-unpatched margin below what a tiny model can show (6.8e-5 in one draw).
    assert_patched_loss(loss, batch, plain, patched, tol=dict(atol=3e-6, rtol=0), autocast_dtype=torch.bfloat16)


@pytest.mark.slow
def test_sft_torch_compile(tmp_path):
    """`torch_compile=True` on one tiny case. Backend aot_eager (dynamo's graph capture and
    AOTAutograd, what the patch must survive): the Trainer's default, inductor, took 160 s
    for this one step on 2 CPU cores; c2rope's ops under inductor are tested in
    test_hf_training.py."""
    torch._dynamo.reset()
    kind = "llava"
    model, processor = trainer_models.make(kind)
    plain, patched = references(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    trainer, spy = train(model, processor, sft_config(tmp_path, torch_compile=True, torch_compile_backend="aot_eager"), trainer_models.dataset(kind))
    trainer.train()
    batch, loss = spy.first_train()
    assert_patched_loss(loss, batch, plain, patched, tol=dict(atol=1e-5, rtol=1e-5))
