"""Routing signals (confidence, entropy) and policies over draft trees."""
from .policies import ConfidenceRouter, EntropyRouter
from .signals import tree_confidence, tree_entropy

__all__ = ["ConfidenceRouter", "EntropyRouter", "tree_confidence", "tree_entropy"]
