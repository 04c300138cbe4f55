"""A per-turn domain router that costs no drafting: a multinomial logistic regression over the
target's prefill hidden state (mean over the prompt's positions of one layer) picks the drafter
for the turn. Fitted from prompts of each drafter's training domain (`fit_domain_router`), stored
as one safetensors file with the drafters (weights, bias, feature standardisation; the drafter
names and the layer in its metadata)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from runtime.atomic import save_tensors


class DomainRouter:
    """names[i] is class i. `layer` indexes transformers' hidden_states tuple (-1: final normed)."""

    def __init__(self, names: Sequence[str], weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, layer: int = -1):
        c, h = weight.shape
        if len(names) != c or len(set(names)) != c or bias.shape != (c,) or mean.shape != (h,) or std.shape != (h,):
            raise ValueError(f"domain router: inconsistent shapes for {len(names)} names: weight {tuple(weight.shape)}, "
                             f"bias {tuple(bias.shape)}, mean {tuple(mean.shape)}, std {tuple(std.shape)}")
        self.names, self.layer = list(names), int(layer)
        self.weight, self.bias, self.mean, self.std = weight.float(), bias.float(), mean.float(), std.float()

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def feature(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """[H]: the mean over the prompt's positions of hidden_states[layer] ([T, H] per layer)."""
        return hidden_states[self.layer].float().mean(0).cpu()

    def probabilities(self, feature: torch.Tensor) -> dict[str, float]:
        if feature.shape != (self.hidden_size,):
            raise ValueError(f"domain router reads features of size {self.hidden_size}, got {tuple(feature.shape)}: "
                             "it was fitted for another target")
        logits = self.weight @ ((feature - self.mean) / self.std) + self.bias
        return dict(zip(self.names, torch.softmax(logits, -1).tolist()))

    def choose(self, hidden_states: Sequence[torch.Tensor]) -> str:
        p = self.probabilities(self.feature(hidden_states))
        return max(self.names, key=lambda n: (p[n], -self.names.index(n)))

    # --- storage --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        save_tensors(path, {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std},
                     metadata={"kind": "specmux-domain-router", "names": json.dumps(self.names), "layer": str(self.layer)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "DomainRouter":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no domain router file at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "specmux-domain-router":
                raise ValueError(f"{path} is not a specmux domain router")
            tensors = {k: f.get_tensor(k) for k in ("weight", "bias", "mean", "std")}
        return cls(json.loads(meta["names"]), layer=int(meta["layer"]), **tensors)


@torch.no_grad()
def prompt_features(model, prompts: Iterable[torch.Tensor], layer: int = -1) -> torch.Tensor:
    """[n, H]: the router feature of each prompt (token ids) under the loaded transformers model."""
    rows = []
    for ids in prompts:
        out = model(input_ids=ids.view(1, -1).to(model.device), output_hidden_states=True, logits_to_keep=1)
        rows.append(out.hidden_states[layer][0].float().mean(0).cpu())
    return torch.stack(rows)


def fit_domain_router(features: Mapping[str, torch.Tensor], layer: int = -1, l2: float = 1e-2,
                      steps: int = 100) -> DomainRouter:
    """Multinomial logistic regression (L2 `l2` on the weights, standardised features, L-BFGS)
    from each name's feature rows [n_i, H]."""
    names = list(features)
    if len(names) < 2 or any(features[n].dim() != 2 or features[n].shape[0] == 0 for n in names):
        raise ValueError("a domain router needs feature rows [n, H] for at least two drafters")
    x = torch.cat([features[n].float() for n in names])
    y = torch.cat([torch.full((features[n].shape[0],), i) for i, n in enumerate(names)])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(len(names), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return DomainRouter(names, weight.detach(), bias.detach(), mean, std, layer)
