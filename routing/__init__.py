"""Routing signals (confidence, entropy, gains against a verified continuation) and policies
over draft trees."""
from .calibration import Calibration
from .online import OnlineRouter
from .policies import ConfidenceRouter, EntropyRouter
from .signals import tree_confidence, tree_entropy, tree_gain

__all__ = ["Calibration", "ConfidenceRouter", "EntropyRouter", "OnlineRouter", "tree_confidence", "tree_entropy", "tree_gain"]
