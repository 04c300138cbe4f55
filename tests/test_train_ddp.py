"""Training under torchrun: two CPU processes (gloo) run DistributedDataParallel through
drafters.training.train.train_drafter and end with the weights one process gets on the same batches."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_train_worker.py")


@pytest.mark.slow  # two fresh interpreters importing torch, transformers and accelerate: 30-60 s here
def test_two_gloo_processes_train_like_one(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path / "ddp")],
                          env=env | {"CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one")], env=env | {"CUDA_VISIBLE_DEVICES": ""},
                   check=True, capture_output=True, timeout=600)
    r0, r1 = (load_file(str(tmp_path / "ddp" / f"rank-{r}.safetensors")) for r in (0, 1))
    one = load_file(str(tmp_path / "one" / "rank-0.safetensors"))
    start = load_file(str(tmp_path / "one" / "initial.safetensors"))
    assert max(float((one[n] - start[n]).abs().max()) for n in one) > 1e-2  # training moved the weights
    for name in one:
        assert torch.equal(r0[name], r1[name]), name  # the replicas stay identical
        # = one process's training (this failed while accelerate stepped the LR schedule once per process)
        torch.testing.assert_close(r0[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # logged once (by rank 0), every step
    assert json.loads((tmp_path / "ddp" / "run" / "train_state" / "progress.json").read_text())["global_step"] == 4
