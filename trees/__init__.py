"""Draft trees: build, merge, pack (X, M, P) and verify. The lossless core of specmux;
depends on torch only (networkx for export)."""
from .build import SparseLogits, build_chain, build_lockstep, build_tree, new_build
from .checks import NonFiniteLogitsError, debug_checks, require_finite_logits
from .feedback import StepFeedback
from .merge import cut_to_budget, merge_trees
from .pack import PackedTree, ancestor_matrix, attention_mask, within_window, kept_cache_positions, pack_tree
from .sampling import process_logits, sample
from .spec import SamplingSpec, TreeSpec
from .tree import DraftTree, Proposals, check_ancestor_closed
from .verifying import BatchVerifyResult, TreeBatch, VerifyResult, verify, verify_batch

__all__ = [
    "DraftTree", "Proposals", "SamplingSpec", "TreeSpec", "PackedTree", "VerifyResult",
    "build_tree", "SparseLogits", "build_lockstep", "new_build", "build_chain", "merge_trees", "cut_to_budget", "pack_tree",
    "kept_cache_positions", "ancestor_matrix", "attention_mask", "within_window", "process_logits", "sample", "verify",
    "TreeBatch", "BatchVerifyResult", "verify_batch", "check_ancestor_closed",
    "NonFiniteLogitsError", "debug_checks", "require_finite_logits", "StepFeedback",
]
