"""HF `Trainer` + DeepSpeed ZeRO-2 / ZeRO-3 on CPU, 2 processes (torchrun, gloo,
DS_ACCELERATOR=cpu), with a c2rope-patched tiny LLaVA patched before the Trainer: rank 0's
first training loss is c2rope's patched forward on that batch (1e-6), not the unpatched
one. The run itself is tests/deepspeed_train.py. Needs deepspeed (CI installs it:
scripts/trainer_lane.sh); skipped without it."""
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_loss_is_patched(stage, tmp_path, _fresh_seed):
    out = tmp_path / "result.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", DS_BUILD_OPS="0", C2ROPE_TEST_SEED=str(_fresh_seed),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(HERE, "deepspeed_train.py"), str(stage), str(out)]
    done = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0 and out.exists(), f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert result["engine"] == "DeepSpeedEngine" and result["dist"] == 2 and result["dp"] == 2, result
    assert abs(result["patched"] - result["unpatched"]) > 1e-4, result  # the batch tells them apart
    assert abs(result["trainer"] - result["patched"]) <= 1e-6 + 1e-6 * abs(result["patched"]), result
