"""Routing signals (confidence, entropy, gains against a verified continuation) and policies
over draft trees."""
from .calibration import Calibration, domain_evidence
from .domain import DomainRouter, fit_domain_router
from .online import OnlineRouter
from .policies import ConfidenceRouter, EntropyRouter
from .signals import tree_confidence, tree_entropy, tree_gain

__all__ = ["Calibration", "domain_evidence", "DomainRouter", "fit_domain_router", "ConfidenceRouter", "EntropyRouter", "OnlineRouter", "tree_confidence", "tree_entropy", "tree_gain"]
