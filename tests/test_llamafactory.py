"""c2rope inside LLaMA-Factory's SFT workflow (`llamafactory.train.tuner.run_exp`, what
`llamafactory-cli train config.yaml` runs) on a tiny random Qwen2-VL saved to a tmp folder
with its processor, and a tiny sharegpt dataset with PNG images, all written in code.

LLaMA-Factory binds the model's `get_rope_index` in its collator and passes the 4-row
M-RoPE `position_ids` it computes; with `neat_packing` it packs samples into one row with
a block-diagonal 4-D mask. The check: the loss the trainer computed on its first batch is
c2rope's (the patched forward on that batch, or with neat_packing each packed sample's
patched forward alone), not the unpatched one.

Runs only in its own lane (scripts/llamafactory_lane.sh: llamafactory 0.9.5, its
transformers, torch 2.14.1 + torchvision 0.29.1, c2rope built against that torch);
skipped where llamafactory is not installed."""
import copy
import json
import random

import pytest
import torch

pytest.importorskip("llamafactory")
pytest.importorskip("torchvision")  # LLaMA-Factory's image path needs it

import transformers  # noqa: E402

import c2rope  # noqa: E402
import qwen_tiny  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
SPECIALS = {"<|im_start|>": 43, "<|im_end|>": 44, "<|endoftext|>": 45, "<|image_pad|>": qwen_tiny.IMAGE_ID,
            "<|video_pad|>": qwen_tiny.VIDEO_ID, "<|vision_start|>": qwen_tiny.VISION_START,
            "<|vision_end|>": qwen_tiny.VISION_END}


def _tokenizer():
    import tokenizers
    from tokenizers import models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: 3 + i for i, w in enumerate(WORDS)},
             "user": 46, "assistant": 47, "system": 48}
    vocab.update({f"<unused{i}>": i for i in range(49, 60)})
    vocab.update(SPECIALS)
    core = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token=None, eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>", unk_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in ("<|im_end|>", "<|endoftext|>")]})
    return tok


def write_model(folder):
    """A tiny random Qwen2-VL and its processor, saved as a hub checkpoint would be."""
    model = qwen_tiny.make_model("qwen2_vl", implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    images = transformers.Qwen2VLImageProcessor(patch_size=qwen_tiny.PATCH, merge_size=qwen_tiny.MERGE,
                                                temporal_patch_size=qwen_tiny.TEMPORAL,
                                                size={"shortest_edge": 64, "longest_edge": 256})
    videos = transformers.Qwen2VLVideoProcessor(patch_size=qwen_tiny.PATCH, merge_size=qwen_tiny.MERGE,
                                                temporal_patch_size=qwen_tiny.TEMPORAL)
    processor = transformers.Qwen2VLProcessor(image_processor=images, tokenizer=_tokenizer(), video_processor=videos)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def write_dataset(folder, rows=4):
    """sharegpt-format rows with one PNG image each, and the dataset_info.json naming them."""
    import numpy as np
    from PIL import Image

    records = []
    for i in range(rows):
        h, w = random.choice([(8, 8), (8, 16), (16, 8), (16, 16)])
        path = folder / f"image{i}.png"
        Image.fromarray(np.random.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        question = " ".join(random.choices(WORDS, k=random.randint(1, 3)))
        answer = " ".join(random.choices(WORDS, k=random.randint(4, 8)))
        records.append({"messages": [{"role": "user", "content": f"<image>{question}"},
                                     {"role": "assistant", "content": answer}], "images": [str(path)]})
    (folder / "tiny.json").write_text(json.dumps(records))
    (folder / "dataset_info.json").write_text(json.dumps({"tiny": {
        "file_name": "tiny.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))


class Recorder:
    """Wraps LLaMA-Factory's SFT trainer class's compute_loss (the trainer is built inside
    run_exp): the first training batch (cloned before the call), its loss and the model."""

    def __init__(self, monkeypatch):
        from llamafactory.train.sft import trainer as sft_trainer

        self.calls = []
        cls = sft_trainer.CustomSeq2SeqTrainer
        original = cls.compute_loss
        recorder = self

        def compute_loss(self, model, inputs, *args, **kwargs):
            kept = {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in inputs.items()}
            out = original(self, model, inputs, *args, **kwargs)
            loss = out[0] if isinstance(out, tuple) else out
            if model.training:
                recorder.calls.append((kept, loss.detach().float().clone(), self.model))
            return out

        monkeypatch.setattr(cls, "compute_loss", compute_loss)


def patch_after_load(monkeypatch):
    """The launcher-script hook: patch the model right after LLaMA-Factory loads it (before
    its collator binds get_rope_index and before the trainer wraps it)."""
    from llamafactory.train.sft import workflow

    load_model = workflow.load_model

    def load_and_patch(*args, **kwargs):
        model = load_model(*args, **kwargs)
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
        return model

    monkeypatch.setattr(workflow, "load_model", load_and_patch)
    return []


class PatchAtTrainBegin(transformers.TrainerCallback):
    """The public hook: run_exp(args, callbacks=[...]) and patch when training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        c2rope.patch_model(model, c2rope.C2RoPEConfig())


def run_sft(tmp_path, callbacks, neat_packing):
    from llamafactory.train.tuner import run_exp

    args = dict(stage="sft", do_train=True, model_name_or_path=str(tmp_path / "model"), dataset="tiny",
                dataset_dir=str(tmp_path / "data"), template="qwen2_vl", finetuning_type="full",
                output_dir=str(tmp_path / "out"), overwrite_output_dir=True, per_device_train_batch_size=2,
                gradient_accumulation_steps=1, max_steps=1, learning_rate=0.0, report_to="none", cutoff_len=256,
                overwrite_cache=True, bf16=False, fp16=False, image_max_pixels=256, image_min_pixels=64,
                flash_attn="sdpa", save_strategy="no", logging_steps=1, dataloader_num_workers=0,
                preprocessing_num_workers=None, plot_loss=False, neat_packing=neat_packing, packing=neat_packing,
                disable_gradient_checkpointing=True, seed=0)
    run_exp(args, callbacks=callbacks)


def _loss(model, batch):
    model.train()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "use_cache"}).loss.float()


@pytest.mark.parametrize("neat_packing", [False, True])
@pytest.mark.parametrize("hook", ["after_load", "callback"])
def test_llamafactory_sft_loss_is_patched(hook, neat_packing, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_model(tmp_path / "model")
    write_dataset(tmp_path / "data")
    recorder = Recorder(monkeypatch)
    callbacks = patch_after_load(monkeypatch) if hook == "after_load" else [PatchAtTrainBegin()]
    if neat_packing:
        # LLaMA-Factory packs with a block-diagonal 4-D mask (its sdpa/eager path): c2rope
        # either trains each packed sample as it is alone (checked below) or refuses with
        # an error that names the mask or the packed layout it cannot place (its position
        # rows put sample starts inside an image); never trains it silently wrong.
        try:
            run_sft(tmp_path, callbacks, neat_packing)
        except ValueError as refusal:
            message = str(refusal)
            assert message.startswith("c2rope") and ("attention_mask" in message or "packed" in message), refusal
            assert not recorder.calls, "c2rope refused only after the trainer had computed a loss"
            return
    else:
        run_sft(tmp_path, callbacks, neat_packing)
    assert recorder.calls, "the trainer computed no training loss"
    batch, loss, trained = recorder.calls[0]

    plain = transformers.Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path / "model"))
    plain.set_attn_implementation("sdpa")
    for (name, p), q in zip(plain.named_parameters(), trained.parameters()):
        assert torch.equal(p, q.detach()), f"LLaMA-Factory changed {name}: the reference would not be its model"
    patched = copy.deepcopy(plain)
    c2rope.patch_model(patched, c2rope.C2RoPEConfig())
    if not neat_packing:
        expected, unpatched = _loss(patched, batch), _loss(plain, batch)
    else:
        expected, unpatched = packed_reference(patched, batch), packed_reference(plain, batch)
    assert abs(expected.item() - unpatched.item()) > 3e-5, (expected, unpatched)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6, msg=lambda m: (
        f"trainer {loss.item():.7f}, c2rope's forward {expected.item():.7f}, unpatched {unpatched.item():.7f}: {m}"))


def packed_reference(model, batch):
    """The mean token loss of a neat-packed batch computed sample by sample, each sample
    alone in its own row (its images, its tokens): what packing must not change. Samples
    are found where the text row of LLaMA-Factory's position_ids restarts at 0."""
    ids, labels = batch["input_ids"], batch["labels"]
    text_positions = batch["position_ids"][0]
    grids = batch["image_grid_thw"].tolist()
    pixels = list(torch.split(batch["pixel_values"], [t * h * w for t, h, w in grids]))
    image = 0
    total, count = torch.zeros((), dtype=torch.float64), 0
    for row in range(ids.shape[0]):
        valid = int((labels[row] != -100).nonzero().max()) + 1 if (labels[row] != -100).any() else 0
        valid = max(valid, int((text_positions[row] != 0).nonzero().max()) + 1)
        starts = (text_positions[row, :valid] == 0).nonzero().flatten().tolist() + [valid]
        for start, end in zip(starts[:-1], starts[1:]):
            sample_ids = ids[row, start:end].unsqueeze(0)
            sample_labels = labels[row, start:end].unsqueeze(0)
            runs = int(((sample_ids[0, 1:] == qwen_tiny.IMAGE_ID) & (sample_ids[0, :-1] != qwen_tiny.IMAGE_ID)).sum())
            kwargs = {}
            if runs:
                kwargs = dict(pixel_values=torch.cat(pixels[image:image + runs]),
                              image_grid_thw=torch.tensor(grids[image:image + runs]))
                image += runs
            n = int((sample_labels[0, 1:] != -100).sum())
            if n:
                loss = _loss(model, dict(input_ids=sample_ids, labels=sample_labels, **kwargs))
                total += loss.double() * n
                count += n
    assert image == len(grids), "the packed batch's images were not all placed"
    return (total / count).float()
