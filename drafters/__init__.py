"""Drafter models, heads, RepSpec layers, losses, training, checkpoints and export."""
from .base import Drafter
from .config import DrafterConfig
from .feature import FeatureDrafter, FeatureDrafterGroup
from .heads import LowRankHead, TargetHead, TruncatedHead, most_frequent_tokens
from .losses import acceptance_rate, distillation_loss, forward_kl, lk_alpha, lk_lambda, topk_distillation
from .model import FeatureDrafterModel, build_drafter_model
from .repspec import HybridRepSpecLinear, RepSpecLinear, apply_repspec, merge_repspec
from .checkpoint import load_drafter, load_drafter_model, save_drafter
from .speculators import export_speculators, import_speculators
from .train import TrainConfig, train_drafter
from .pretrained import load_pretrained, pretrained_drafters
