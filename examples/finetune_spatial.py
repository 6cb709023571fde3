"""Fine-tune a tiny LLaVA-style model on synthetic spatial questions, with a choice of
position scheme, on one process or many (DDP or FSDP2), with checkpoints and resume.

    python examples/finetune_spatial.py --scheme c2rope            # 800 steps, ~30 s on a free CPU core
    python examples/finetune_spatial.py --scheme c2rope --packed   # one padding-free row per batch
    torchrun --nproc_per_node 2 examples/finetune_spatial.py --scheme c2rope --strategy fsdp \\
        --ckpt-dir /tmp/ck --save-every 200                    # add --resume to continue

The model is a transformers LlamaForCausalLM built from a small random LlamaConfig; a
learned projector turns each image's patch features into the embeddings of its image
tokens (original LLaVA splices image features into inputs_embeds the same way), and
the answer is read from the logits of the last token. Schemes:

    rope1d         the unpatched model: 1-D raster RoPE, causal mask
    c2rope         c2rope.patch_model(lm, C2RoPEConfig()): (m, x, y) positions, outward mask
    c2rope-causal  C2RoPE positions with the ordinary causal mask (separates the two effects)
    c2rope-paper   C2RoPEConfig.paper_code(): merged coords, concentric m, inward mask
    c2rope-<name>  C2RoPEConfig.from_name(<name>): c2rope-seed, c2rope-shared-high,
                   c2rope-shared-spread-causal, ... (temporal index, spatial band, mask)
    mrope          Qwen2-VL M-RoPE (t, h, w) positions (c2rope.mrope) on this Llama
    circle         Circle-RoPE positions (c2rope.mrope with a CircleRoPEConfig), all layers

C2RoPE schemes go through the public c2rope.patch_model with the image spans given per
call as `visual_layout=` (there are no image ids in inputs_embeds). c2rope.hf patches
M-RoPE/Circle-RoPE only for Qwen2-VL models, so for this Llama the two are wired here:
the decoder's rotary module is swapped for `MultiAxisRotary`, which returns cos/sin of
the (t, h, w) positions of the current batch via c2rope.mrope.mrope_cos_sin.

Rank 0 prints JSON lines: {"event": "step", ...}, {"event": "eval", ...} and, last,
{"event": "final", "scheme", "first_loss", "last_loss", "accuracy", ...}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spatial_data import RELATIONS, Batch, SpatialTask, step_seed  # noqa: E402

try:
    import c2rope
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import c2rope
from c2rope.circle import CircleRoPEConfig  # noqa: E402
from c2rope.mrope import mrope_axis_table, mrope_cos_sin, mrope_position_ids  # noqa: E402

SCHEMES = ("rope1d", "c2rope", "c2rope-causal", "c2rope-paper", "mrope", "circle")
# Besides SCHEMES, "c2rope-<name>" takes any c2rope.C2RoPEConfig.from_name name, e.g.
# c2rope-seed, c2rope-shared-high, c2rope-shared-high-causal (docs/continuity.md).
C2ROPE_PREFIX = "c2rope-"
STRATEGIES = ("auto", "none", "ddp", "fsdp")


# ----------------------------------------------------------------------------- model


class MultiAxisRotary(nn.Module):
    """Stands in for a Llama decoder's `rotary_emb`: cos/sin of 3-axis (t, h, w)
    positions set for the current forward in `pending` ([3, B, S], HF M-RoPE layout);
    without pending positions it falls back to the original module (plain RoPE)."""

    def __init__(self, original: nn.Module, axis: List[int]):
        super().__init__()
        self.original = original
        self.register_buffer("axis", torch.tensor(axis, dtype=torch.int32), persistent=False)
        self.pending: Optional[torch.Tensor] = None

    def forward(self, x, position_ids=None, *args, **kwargs):
        if self.pending is None:
            return self.original(x, position_ids)
        inv_freq = self.original.inv_freq.to(device=x.device, dtype=torch.float32)
        scaling = float(getattr(self.original, "attention_scaling", 1.0))
        return mrope_cos_sin(self.pending, inv_freq, self.axis.to(x.device), scaling, x.dtype)


class SpatialVLM(nn.Module):
    """A causal LM whose image tokens' input embeddings come from a patch projector."""

    def __init__(self, lm: nn.Module, feature_dim: int, img_id: int):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.img_id = img_id
        self.multi_axis: Optional[MultiAxisRotary] = None  # set for mrope / circle

    def forward(self, input_ids, features, visual_layout=None, mrope_positions=None, packed=False):
        """Answer logits [B, vocab] (from each sample's last token). With `packed`, the B
        samples run as ONE row back to back, position_ids restarting at 0 for each
        (DataCollatorWithFlattening's layout): the result must equal the batched run."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        image = (input_ids == self.img_id).unsqueeze(-1)
        projected = self.projector(features).to(embeds.dtype)
        # Every row holds exactly H*W image tokens in raster order: one scatter suffices.
        embeds = embeds.masked_scatter(image, projected)
        kwargs = {} if visual_layout is None else {"visual_layout": visual_layout}
        rows, length = input_ids.shape
        if packed:
            embeds = embeds.reshape(1, rows * length, embeds.shape[-1])
            kwargs["position_ids"] = torch.arange(length, device=embeds.device).repeat(rows).unsqueeze(0)
            kwargs["logits_to_keep"] = torch.arange(1, rows + 1, device=embeds.device) * length - 1
        else:
            kwargs["logits_to_keep"] = 1
        if self.multi_axis is not None:
            self.multi_axis.pending = mrope_positions
        try:
            # No attention_mask and no cache: that is how transformers (and c2rope) recognise
            # packed rows from restarting position_ids and keep the samples apart.
            out = self.lm(inputs_embeds=embeds, use_cache=False, **kwargs)
        finally:
            if self.multi_axis is not None:
                self.multi_axis.pending = None
        return (out.logits[0] if packed else out.logits[:, -1]).float()


def build_model(args, task: SpatialTask) -> SpatialVLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=task.vocab_size,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        head_dim=args.head_dim,
        max_position_embeddings=max(256, 2 * task.seq_len),
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
        pad_token_id=task.pad_id,
        bos_token_id=task.bos_id,
        eos_token_id=task.sep_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(args.seed)  # identical init on every rank and for every scheme
    model = SpatialVLM(LlamaForCausalLM(config), task.feature_dim, task.img_id)
    apply_scheme(model, args.scheme)
    return model


def mrope_sections(head_dim: int):
    """Qwen2-VL's t:h:w = 16:24:24 slot split scaled to this head dim (h = w)."""
    half = head_dim // 2
    spatial = max(1, round(half * 24 / 64))
    return (half - 2 * spatial, spatial, spatial)


def c2rope_config(scheme: str) -> "c2rope.C2RoPEConfig":
    """The C2RoPEConfig of a "c2rope" or "c2rope-<name>" scheme (ValueError otherwise)."""
    if scheme == "c2rope":
        return c2rope.C2RoPEConfig()
    if not scheme.startswith(C2ROPE_PREFIX):
        raise ValueError(f"not a c2rope scheme: {scheme!r}")
    return c2rope.C2RoPEConfig.from_name(scheme[len(C2ROPE_PREFIX):])


def scheme_arg(text: str) -> str:
    """argparse type of --scheme: one of SCHEMES or any c2rope-<name>."""
    if text not in SCHEMES:
        try:
            c2rope_config(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not in {SCHEMES} nor a c2rope-<name> ({exc})")
    return text


def apply_scheme(model: SpatialVLM, scheme: str) -> None:
    lm = model.lm
    if scheme == "rope1d":
        return
    if scheme.startswith("c2rope"):
        # No image_token_id: the spans come with every call as visual_layout=.
        c2rope.patch_model(lm, c2rope_config(scheme))
        return
    head_dim = lm.config.head_dim
    decoder = lm.model
    model.multi_axis = MultiAxisRotary(decoder.rotary_emb, mrope_axis_table(mrope_sections(head_dim), head_dim))
    decoder.rotary_emb = model.multi_axis


def position_inputs(batch: Batch, task: SpatialTask, scheme: str, packed: bool = False) -> Dict[str, object]:
    """The per-batch extra forward arguments a scheme needs (for one packed row of all
    samples when `packed`)."""
    h, w = task.grid
    rows, length = batch.input_ids.shape
    extra: Dict[str, object] = {"packed": True} if packed else {}
    if scheme.startswith("c2rope"):
        if packed:  # every image span, offset to where its sample sits in the packed row
            spans = [[(b * length + int(s), h, w) for b, s in enumerate(batch.image_start.tolist())]]
            layout = c2rope.VisualLayout.from_spans(spans, rows * length, device=batch.input_ids.device)
        else:
            spans = [[(int(s), h, w)] for s in batch.image_start.tolist()]
            layout = c2rope.VisualLayout.from_spans(spans, length, device=batch.input_ids.device)
        return {"visual_layout": layout, **extra}
    if scheme in ("mrope", "circle"):
        types = (batch.input_ids == task.img_id).long()
        positions, _ = mrope_position_ids(
            mm_token_type_ids=types,
            image_grid_thw=[(1, h, w)] * len(batch),
            spatial_merge_size=1,
            circle=CircleRoPEConfig() if scheme == "circle" else None,
        )
        if packed:  # [3, B, S] -> [3, 1, B*S]: each sample keeps the positions it has alone
            positions = positions.reshape(3, 1, rows * length)
        return {"mrope_positions": positions, **extra}
    return extra


# ----------------------------------------------------------------------------- distributed


class Dist:
    """Rank/world of this process; a single process needs no process group."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg == "cuda":
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(device_arg)
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: SpatialVLM, strategy: str, env: Dist) -> nn.Module:
    if strategy == "auto":
        strategy = "ddp" if env.enabled else "none"
    if strategy == "none":
        if env.enabled:
            raise ValueError("--strategy none cannot run on several processes")
        return model
    if not env.enabled:
        raise ValueError(f"--strategy {strategy} needs several processes (launch with torchrun)")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for layer in model.lm.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model, optimizer, step: int, args, env: Dist) -> str:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = os.path.join(args.ckpt_dir, f"step_{step}")
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_dcp():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)
    env.barrier()
    if env.rank == 0:
        with open(os.path.join(path, "trainer.json"), "w") as f:
            json.dump({"step": step, "signature": run_signature(args)}, f)
        with open(os.path.join(args.ckpt_dir, "latest"), "w") as f:
            f.write(f"step_{step}\n")
    env.barrier()
    return path


@contextlib.contextmanager
def _single_process_dcp():
    """DCP warns that it assumes one process when no process group exists; that is
    exactly the intent of a single-process run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def run_signature(args) -> dict:
    """What must match between a checkpoint and the run resuming from it."""
    keys = ("scheme", "hidden", "layers", "heads", "head_dim", "grid", "num_types", "feature_dim", "rope_theta")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ((k, getattr(args, k)) for k in keys)}


def find_resume_path(args) -> Optional[str]:
    if args.resume_from:
        return args.resume_from
    if args.resume and args.ckpt_dir:
        latest = os.path.join(args.ckpt_dir, "latest")
        if os.path.exists(latest):
            with open(latest) as f:
                return os.path.join(args.ckpt_dir, f.read().strip())
    return None


def load_checkpoint(model, optimizer, path: str, args) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta_path = os.path.join(path, "trainer.json")
    if not os.path.exists(meta_path):
        raise ValueError(f"--resume-from {path!r} is not a checkpoint of this script (no trainer.json)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta["signature"] != run_signature(args):
        raise ValueError(f"checkpoint {path!r} was saved by a different run: {meta['signature']} "
                         f"vs {run_signature(args)}")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _single_process_dcp():
        dcp.load(state, checkpoint_id=path)  # resharded to this run's strategy and world size
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(meta["step"])


# ----------------------------------------------------------------------------- training


def learning_rate(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 10 % at --steps (a function of the step
    alone, so a resumed run needs no scheduler state)."""
    warmup = max(1, min(args.warmup, args.steps // 10))
    if step <= warmup:
        return args.lr * step / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def autocast(args, env: Dist):
    if args.bf16:
        return torch.autocast(env.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, task: SpatialTask, args, env: Dist, eval_set: Batch) -> Dict[str, float]:
    """Accuracy on the fixed held-out set, overall and per relation."""
    model.eval()
    per_rank = len(eval_set) // env.world  # same number of forwards on every rank (FSDP)
    mine = eval_set.shard(env.rank, env.world)
    correct = torch.zeros(len(RELATIONS), dtype=torch.float64)
    total = torch.zeros(len(RELATIONS), dtype=torch.float64)
    for begin in range(0, per_rank, args.eval_batch):
        end = min(per_rank, begin + args.eval_batch)
        chunk = Batch(*(getattr(mine, f)[begin:end] for f in Batch.__dataclass_fields__)).to(env.device)
        with autocast(args, env):
            logits = model(chunk.input_ids, chunk.features, **position_inputs(chunk, task, args.scheme, args.packed))
        hit = (logits.argmax(-1) == chunk.answer).double().cpu()
        rel = chunk.relation.cpu()
        correct.index_add_(0, rel, hit)
        total.index_add_(0, rel, torch.ones_like(hit))
    both = env.all_sum(torch.stack([correct, total]).to(env.device)).cpu()
    correct, total = both[0], both[1]
    model.train()
    result = {"accuracy": float(correct.sum() / total.sum().clamp(min=1))}
    for i, name in enumerate(RELATIONS):
        result[name] = float(correct[i] / total[i]) if total[i] > 0 else float("nan")
    return result


def emit(env: Dist, record: dict) -> None:
    if env.rank == 0:
        print(json.dumps(record), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheme", type=scheme_arg, default="c2rope",
                   help=f"one of {', '.join(SCHEMES)}, or c2rope-<name> for any C2RoPEConfig.from_name "
                        "name (c2rope-seed, c2rope-shared-high-causal, ...)")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="auto: DDP under torchrun with several processes, else none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--steps", type=int, default=800, help="total optimizer steps (a resumed run stops here too)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per process per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=None,
                   help="per-head dim (default hidden/heads); lets a narrow model keep a wide rotary dim")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--grid", type=int, nargs=2, default=(4, 4), metavar=("H", "W"))
    p.add_argument("--num-types", type=int, default=6)
    p.add_argument("--objects", type=int, default=3, help="objects per image")
    p.add_argument("--feature-dim", type=int, default=32)
    p.add_argument("--max-filler", type=int, default=3)
    p.add_argument("--eval-size", type=int, default=512)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-dir", default=None)
    p.add_argument("--save-every", type=int, default=0, help="0: save only at the end (when --ckpt-dir is set)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/latest if present")
    p.add_argument("--resume-from", default=None, help="a step_N checkpoint directory to continue from")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs)")
    p.add_argument("--packed", action="store_true",
                   help="run each batch as one padding-free row (samples back to back, position_ids "
                        "restarting per sample); gives the batched run's losses")
    args = p.parse_args(argv)
    args.grid = tuple(args.grid)
    for name in ("steps", "batch_size", "eval_size", "eval_batch", "eval_every", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.head_dim is None:
        if args.hidden % args.heads:
            p.error("--hidden must be divisible by --heads (or give --head-dim)")
        args.head_dim = args.hidden // args.heads
    elif args.head_dim < 2 or args.head_dim % 2:
        p.error("--head-dim must be an even int >= 2")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = Dist(args.device)
    try:
        return train(args, env)
    finally:
        env.close()


def train(args, env: Dist) -> dict:
    task = SpatialTask(grid=args.grid, num_types=args.num_types, objects_per_image=args.objects,
                       feature_dim=args.feature_dim, max_filler=args.max_filler)
    model = build_model(args, task).to(env.device)
    model = wrap(model, args.strategy, env)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    start = 0
    resume_path = find_resume_path(args)
    if resume_path is not None:
        start = load_checkpoint(model, optimizer, resume_path, args)
        emit(env, {"event": "resume", "from": resume_path, "step": start})
    eval_set = task.sample(args.eval_size // env.world * env.world, seed=10_000_019 + args.seed)

    losses: List[float] = []
    curve: List[List[float]] = []
    began = time.time()
    model.train()
    for step in range(start + 1, args.steps + 1):
        batch = task.sample(args.batch_size, step_seed(args.seed, step, env.rank)).to(env.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        with autocast(args, env):
            logits = model(batch.input_ids, batch.features, **position_inputs(batch, task, args.scheme, args.packed))
        loss = F.cross_entropy(logits.float(), batch.answer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        mean_loss = float(env.all_sum(loss.detach().reshape(1)).item()) / env.world
        losses.append(mean_loss)
        if step % args.log_every == 0 or step == start + 1 or step == args.steps:
            emit(env, {"event": "step", "step": step, "loss": mean_loss, "lr": learning_rate(step, args)})
        if step % args.eval_every == 0 or step == args.steps:
            metrics = evaluate(model, task, args, env, eval_set)
            curve.append([step, metrics["accuracy"]])
            emit(env, {"event": "eval", "step": step, **metrics})
        if args.ckpt_dir and ((args.save_every and step % args.save_every == 0) or step == args.steps):
            path = save_checkpoint(model, optimizer, step, args, env)
            emit(env, {"event": "checkpoint", "step": step, "path": path})

    if not losses:  # resumed at (or past) the last step: nothing to train
        metrics = evaluate(model, task, args, env, eval_set)
        curve.append([start, metrics["accuracy"]])
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    final = {
        "event": "final",
        "scheme": args.scheme,
        "first_loss": losses[0] if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
        "last_loss_avg": sum(tail) / len(tail),
        "accuracy": metrics["accuracy"],
        "per_relation": {name: metrics[name] for name in RELATIONS},
        "start_step": start,
        "steps": args.steps,
        "world_size": env.world,
        "strategy": args.strategy if args.strategy != "auto" else ("ddp" if env.enabled else "none"),
        "device": env.device.type,
        "seconds": round(time.time() - began, 2),
        "curve": curve,
    }
    emit(env, final)
    return {**final, "losses": losses}


if __name__ == "__main__":
    main()
