"""Training specialist drafters: data and corpora, target-state caches, the trainer, the
`specmux train` / `specmux train-suite` commands. Inference never imports this package
(tests/test_layout.py checks that `import compose` loads none of it)."""
from .train import TrainConfig, evaluate_drafter, train_drafter

__all__ = ["TrainConfig", "evaluate_drafter", "train_drafter"]
