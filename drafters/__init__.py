"""Drafter models and the Drafter protocol, heads, RepSpec layers, losses, checkpoints and export.
Training lives in drafters.training, loaded only when asked for (`from drafters import
train_drafter` still works), so that inference never loads the trainer."""
from .base import Drafter
from .config import DrafterConfig
from .feature import FeatureDrafter, FeatureDrafterGroup
from .heads import LowRankHead, TargetHead, TruncatedHead, most_frequent_tokens
from .losses import acceptance_rate, distillation_loss, forward_kl, lk_alpha, lk_lambda, topk_distillation
from .model import FeatureDrafterModel, build_drafter_model
from .repspec import HybridRepSpecLinear, RepSpecLinear, apply_repspec, merge_repspec
from .checkpoint import load_drafter, load_drafter_model, save_drafter
from .speculators import export_speculators, import_speculators
from .pretrained import load_pretrained, pretrained_drafters

_TRAINING = ("TrainConfig", "train_drafter")


def __getattr__(name: str):
    if name in _TRAINING:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'drafters' has no attribute {name!r}")
