"""The spatial fine-tuning example: its synthetic data, every position scheme, and
distributed training (2 gloo processes, FSDP2 then DDP) with checkpoint and resume."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPT = os.path.join(EXAMPLES, "finetune_spatial.py")
sys.path.insert(0, EXAMPLES)

import finetune_spatial as fs  # noqa: E402
from spatial_data import QUADRANTS, RELATIONS, SpatialTask  # noqa: E402

# Small enough for seconds per run on 2 shared CPU cores.
TINY = ["--hidden", "32", "--layers", "2", "--heads", "2", "--grid", "4", "4", "--batch-size", "8",
        "--eval-size", "32", "--eval-batch", "16", "--lr", "1e-2", "--log-every", "1"]


def _decode_answer(task: SpatialTask, features, input_ids):
    """Recompute one example's answer from its noiseless features, independently of
    SpatialTask.answer_for: find every object (and the marked one) by its prototype,
    then walk the grid."""
    h, w = task.grid
    protos = task.prototypes()
    kinds, marker = protos[: task.num_types], protos[task.num_types]
    grid, marked = {}, []
    for cell in range(h * w):
        vec = features[cell]
        if vec.abs().max() == 0:
            continue
        for kind in range(task.num_types):
            if torch.allclose(vec, kinds[kind]):
                grid[divmod(cell, w)] = kind
            elif torch.allclose(vec, kinds[kind] + marker):
                grid[divmod(cell, w)] = kind
                marked.append(divmod(cell, w))
        assert divmod(cell, w) in grid, "a cell that is neither empty nor an object"
    assert len(marked) == 1
    (row, col), = marked
    relation = RELATIONS[task.relation_ids.index(int(input_ids[1]))]
    if relation == "quadrant":
        top, left = row < h / 2, col < w / 2
        name = ("top-" if top else "bottom-") + ("left" if left else "right")
        return task.quadrant_id(QUADRANTS.index(name))
    step = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}[relation]
    other = grid.get((row + step[0], col + step[1]))
    return task.none_id if other is None else task.object_id(other)


def test_dataset_answers_and_layout():
    task = SpatialTask(grid=(4, 6), noise=0.0, max_filler=3)
    batch = task.sample(200, seed=int(torch.randint(1 << 30, (1,))))
    h, w = task.grid
    assert batch.input_ids.shape == (200, task.seq_len)
    assert batch.features.shape == (200, h * w, task.feature_dim)
    for i in range(len(batch)):
        ids, start = batch.input_ids[i], int(batch.image_start[i])
        assert ids[0] == task.bos_id and ids[-1] == task.sep_id
        image = (ids == task.img_id).nonzero().flatten()
        assert image.tolist() == list(range(start, start + h * w))  # one contiguous raster span
        assert int(batch.answer[i]) == _decode_answer(task, batch.features[i], ids)
        assert int(batch.relation[i]) == task.relation_ids.index(int(ids[1]))
    # Every relation, NONE and non-NONE neighbour answers and several image offsets occur.
    assert set(batch.relation.tolist()) == set(range(len(RELATIONS)))
    neighbour = batch.relation != RELATIONS.index("quadrant")
    assert (batch.answer[neighbour] == task.none_id).any() and (batch.answer[neighbour] != task.none_id).any()
    assert len(set(batch.image_start.tolist())) > 1


def test_dataset_is_a_function_of_the_seed():
    task = SpatialTask()
    seed = int(torch.randint(1 << 30, (1,)))
    a, b, c = task.sample(16, seed), task.sample(16, seed), task.sample(16, seed + 1)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.features, b.features)
    assert not torch.equal(a.features, c.features)


@pytest.mark.parametrize("bad", [dict(grid=(5, 4)), dict(objects_per_image=0), dict(neighbor_prob=1.5)])
def test_dataset_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        SpatialTask(**bad)


def test_every_scheme_changes_positions_and_trains():
    """Same init and batch: every non-1D scheme gives different logits from rope1d (its
    positions really reach attention), and gradients reach the projector.

    rope_theta 100: with the usual 10000 and a 16-dim head the spatial slots (the lowest
    frequencies) turn by ~1e-3 rad over the grid, too little to see in random logits."""
    args = fs.parse_args(TINY + ["--scheme", "rope1d", "--rope-theta", "100"])
    task = SpatialTask(grid=args.grid, num_types=args.num_types, objects_per_image=args.objects,
                       feature_dim=args.feature_dim, max_filler=args.max_filler)
    batch = task.sample(4, seed=int(torch.randint(1 << 30, (1,))))
    reference = fs.build_model(args, task)(batch.input_ids, batch.features)
    for scheme in fs.SCHEMES[1:]:
        args.scheme = scheme
        model = fs.build_model(args, task)
        logits = model(batch.input_ids, batch.features, **fs.position_inputs(batch, task, scheme))
        assert logits.shape == (4, task.vocab_size)
        assert not torch.allclose(logits, reference, atol=1e-5), scheme
        logits.logsumexp(-1).sum().backward()
        assert model.projector[0].weight.grad.abs().sum() > 0, scheme


@pytest.mark.parametrize("scheme", ["rope1d", "c2rope", "c2rope-paper", "c2rope-causal", "mrope"])
def test_packed_training_matches_the_batched_run(scheme):
    """--packed runs every batch as one padding-free row (position_ids restarting per
    sample): a few training steps give the batched run's losses and accuracy. A wrong
    block-diagonal mask or positions that do not restart would move them by far more."""
    common = TINY + ["--scheme", scheme, "--steps", "3", "--eval-every", "3", "--rope-theta", "100",
                     "--seed", str(int(torch.randint(1000, (1,))))]
    batched = fs.main(common)
    packed = fs.main(common + ["--packed"])
    torch.testing.assert_close(torch.tensor(packed["losses"]), torch.tensor(batched["losses"]), rtol=1e-4, atol=1e-5)
    assert packed["accuracy"] == batched["accuracy"]


def test_packed_samples_see_only_themselves():
    """The packed forward's answer logits equal the batched ones, and perturbing one
    sample changes no other sample's logits."""
    args = fs.parse_args(TINY + ["--scheme", "c2rope", "--rope-theta", "100"])
    task = SpatialTask(grid=args.grid, num_types=args.num_types, objects_per_image=args.objects,
                       feature_dim=args.feature_dim, max_filler=args.max_filler)
    batch = task.sample(3, seed=int(torch.randint(1 << 30, (1,))))
    model = fs.build_model(args, task)
    with torch.no_grad():
        batched = model(batch.input_ids, batch.features, **fs.position_inputs(batch, task, "c2rope"))
        packed = model(batch.input_ids, batch.features, **fs.position_inputs(batch, task, "c2rope", packed=True))
        torch.testing.assert_close(packed, batched, rtol=1e-5, atol=1e-5)
        batch.features[1] += 1.0
        moved = model(batch.input_ids, batch.features, **fs.position_inputs(batch, task, "c2rope", packed=True))
    torch.testing.assert_close(moved[[0, 2]], packed[[0, 2]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved[1], packed[1], atol=1e-4)


def test_head_dim_option_widens_heads_of_a_narrow_model():
    """--head-dim decouples the rotary dim from hidden/heads (the continuity study's head
    dim 64 at hidden 32): the model, c2rope's split and M-RoPE's sections all use it."""
    args = fs.parse_args(TINY + ["--scheme", "c2rope-recommended", "--head-dim", "24"])
    assert args.head_dim == 24 and fs.parse_args(TINY).head_dim == 16  # default: hidden / heads
    task = SpatialTask(grid=args.grid, num_types=args.num_types, objects_per_image=args.objects)
    batch = task.sample(3, seed=int(torch.randint(1 << 30, (1,))))
    for scheme in ("c2rope-recommended", "mrope"):
        args.scheme = scheme
        model = fs.build_model(args, task)
        assert model.lm.config.head_dim == 24
        assert model.lm.model.layers[0].self_attn.q_proj.out_features == 2 * 24
        logits = model(batch.input_ids, batch.features, **fs.position_inputs(batch, task, scheme))
        assert logits.shape == (3, task.vocab_size) and torch.isfinite(logits).all()
    for bad in ("15", "0"):
        with pytest.raises(SystemExit):
            fs.parse_args(TINY + ["--head-dim", bad])
    with pytest.raises(SystemExit):  # hidden 30 is not divisible by 4 heads, and no --head-dim
        fs.parse_args(["--hidden", "30", "--heads", "4"])


def test_single_process_resume_is_exact(tmp_path):
    common = TINY + ["--scheme", "c2rope-paper", "--steps", "4", "--eval-every", "4"]
    full = fs.main(common + ["--ckpt-dir", str(tmp_path / "a"), "--save-every", "2"])
    assert full["start_step"] == 0 and len(full["losses"]) == 4
    resumed = fs.main(common + ["--ckpt-dir", str(tmp_path / "b"), "--resume-from", str(tmp_path / "a" / "step_2")])
    assert resumed["start_step"] == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5)
    # --resume picks the latest checkpoint (step 4 = --steps): nothing left to train.
    again = fs.main(common + ["--ckpt-dir", str(tmp_path / "a"), "--resume"])
    assert again["start_step"] == 4 and again["losses"] == []
    assert again["accuracy"] == pytest.approx(full["accuracy"])
    # A checkpoint of another scheme is refused, naming the mismatch.
    with pytest.raises(ValueError, match="different run"):
        fs.main(TINY + ["--scheme", "rope1d", "--steps", "4", "--resume-from", str(tmp_path / "a" / "step_2")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), SCRIPT, *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert records and records[-1]["event"] == "final", done.stdout[-2000:]
    return records


def test_torchrun_two_processes_fsdp_then_ddp_resume(tmp_path):
    """FSDP2 on 2 gloo processes trains (loss falls) and checkpoints; a DDP run resumed
    from its mid-run checkpoint (resharded by torch.distributed.checkpoint) continues at
    the saved step and reproduces the FSDP run's losses."""
    common = TINY + ["--scheme", "c2rope", "--steps", "8", "--eval-every", "8"]
    first = _torchrun(common + ["--strategy", "fsdp", "--ckpt-dir", str(tmp_path / "a"), "--save-every", "4"], tmp_path)
    final = first[-1]
    assert final["scheme"] == "c2rope" and final["world_size"] == 2 and final["strategy"] == "fsdp"
    assert final["last_loss"] < final["first_loss"]
    assert 0.0 <= final["accuracy"] <= 1.0
    assert [r["step"] for r in first if r["event"] == "checkpoint"] == [4, 8]
    losses = {r["step"]: r["loss"] for r in first if r["event"] == "step"}
    assert sorted(losses) == list(range(1, 9))

    second = _torchrun(common + ["--strategy", "ddp", "--ckpt-dir", str(tmp_path / "b"),
                                 "--resume-from", str(tmp_path / "a" / "step_4")], tmp_path)
    assert [r for r in second if r["event"] == "resume"][0]["step"] == 4
    assert second[-1]["start_step"] == 4 and second[-1]["strategy"] == "ddp"
    resumed = {r["step"]: r["loss"] for r in second if r["event"] == "step"}
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(losses[step], rel=1e-4), step


def test_train_schemes_benchmark_smoke(tmp_path):
    """benchmarks/train_schemes.py --quick writes the results, the table and the plot."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import train_schemes

    assert train_schemes.main(["--quick", "--schemes", "rope1d", "c2rope", "--seeds", "0", "1",
                               "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "results.json").read_text())
    assert [(r["scheme"], r["seed"]) for r in runs] == [("rope1d", 0), ("rope1d", 1), ("c2rope", 0), ("c2rope", 1)]
    assert all(len(r["losses"]) == 6 and r["curve"][-1][0] == 6 for r in runs)
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0].startswith("| scheme | accuracy |") and table[2].startswith("| rope1d | ")
    assert table[3].startswith("| c2rope | ") and "±" in table[3]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
