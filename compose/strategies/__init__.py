"""Composition strategies, one module per family: single.py (autoregressive, single, averaged),
routed.py (confidence, entropy, online, domain), merged.py (merged_tree); base.py says what a
strategy is. Adding one: a module (or a class in its family's) and a line in STRATEGIES."""
from .base import ComposedTree, MultiDrafterStrategy, Strategy, match_rule
from .merged import MergedTree
from .routed import Confidence, Domain, Entropy, Online
from .single import Autoregressive, Averaged, Single, average_drafters

# the registry: strategy name -> class (generate(strategy=...), eval's plan, `specmux --strategy`)
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Autoregressive, Single, Averaged, Confidence, Entropy, MergedTree, Online, Domain)
}

__all__ = ["STRATEGIES", "Strategy", "MultiDrafterStrategy", "ComposedTree", "match_rule", "average_drafters",
           "Autoregressive", "Single", "Averaged", "Confidence", "Entropy", "MergedTree", "Online", "Domain"]
