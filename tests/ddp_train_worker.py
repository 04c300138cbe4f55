"""One process of the DDP training test (tests/test_train_ddp.py): `torchrun --nproc_per_node 2
tests/ddp_train_worker.py OUT` trains a tiny drafter through drafters.training.train.train_drafter (accelerate
prepares DistributedDataParallel over gloo on the CPU) and writes this rank's final weights to
OUT/rank-<r>.safetensors. Without torchrun it trains the same batches in one process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drafter_fixtures import tiny_drafter_model, tiny_target  # noqa: E402
from runtime.atomic import save_tensors  # noqa: E402
from drafters.training.train import TrainConfig, train_drafter  # noqa: E402


def records(target, n=8, length=16):
    """Equal lengths and prompt lengths: each rank's mean loss over its half of a batch then
    averages to the whole batch's mean, so DDP's gradient equals one process's."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, target.config.vocab_size, (length,), generator=g)
        with torch.no_grad():
            hs = target(ids[None], output_hidden_states=True).hidden_states
        out.append({"input_ids": ids, "features": hs[-1][0], "last_hidden": hs[-1][0], "prompt_len": 3})
    return out


def config() -> TrainConfig:
    # SGD: an update linear in the gradient, so float noise in the all-reduce stays float noise
    # (AdamW turns near-zero gradient entries into +-lr steps either way)
    return TrainConfig(epochs=2, batch_size=4, lr=0.5, optimizer="sgd", unroll_steps=2, warmup_steps=1,
                       checkpoint_every=3, precision="float32", grad_clip=1.0)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    target = tiny_target(vocab=64, layers=2, hidden=32, seed=3)
    model = tiny_drafter_model(target, seed=4)
    train_drafter(model, target.get_output_embeddings().weight, records(target), config(), out / "run", progress=False)
    rank = int(os.environ.get("RANK", "0"))
    save_tensors(out / f"rank-{rank}.safetensors", model.state_dict())
    save_tensors(out / "initial.safetensors", tiny_drafter_model(target, seed=4).state_dict())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
