"""Architecture config of a feature-level drafter (pydantic; saved as config.json).

Two styles share one model file:
- "eagle1" (EAGLE-1/2, HASS): fc([emb(x); f]) -> one decoder layer shaped like the target's.
  Reads one target layer (default -1, the final normed state); feeds back its own output.
  Layout "eagle" is EAGLE-1 as vLLM serves it (fc without bias, the layer reads fc's output
  un-normed, the head reads the layer's output un-normed); "prenorm" (checkpoints of format
  version 1) adds an fc bias and norms there, which vLLM's EAGLE model cannot express.
- "eagle3": fc(concat of a low, a middle and a high target layer) -> hidden; the decoder layer
  attends over [norm(emb(x)); norm(hidden)] (2 x hidden wide), as vLLM / SGLang serve it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Style = Literal["eagle1", "eagle3"]
HeadKind = Literal["target", "truncated", "lowrank"]
RepSpecMode = Literal["off", "repspec", "hybrid", "hybrid_merged"]  # hybrid_merged: deployment form

SUPPORTED_TARGET_TYPES = ("llama", "qwen2", "mistral")


class DrafterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    style: Style = "eagle1"
    # --- the target it was built for (validated on load) ---
    target_name: str
    target_model_type: str = "llama"
    vocab_size: int = Field(gt=0)  # TARGET vocabulary
    target_hidden_size: int = Field(gt=0)
    target_num_layers: int = Field(gt=0)
    target_layers: list[int]  # indices into transformers' hidden_states tuple; -1 = final normed
    # --- the decoder layer, shaped like the target's ---
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    hidden_act: Literal["silu"] = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # transformers rope_parameters when not default
    max_position_embeddings: int = 8192
    qkv_bias: bool = False  # llama: attention_bias; qwen2: True
    o_bias: bool = False
    norm_before_residual: bool = False  # eagle3: residual taken after hidden_norm
    eagle1_layout: Literal["eagle", "prenorm"] = "eagle"  # eagle1 only (see the module docstring)
    # --- head ---
    head: HeadKind = "target"
    draft_vocab_size: int | None = None  # truncated head only
    head_rank: int | None = None  # low-rank head only
    # --- RepSpec (training-time reparameterisation) ---
    repspec: RepSpecMode = "off"
    repspec_branches: int = Field(default=2, ge=0)
    hybrid_rank: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "DrafterConfig":
        if self.style == "eagle1" and len(self.target_layers) != 1:
            raise ValueError("an eagle1 drafter reads exactly one target layer (it feeds back its own output)")
        if self.style == "eagle1" and self.target_hidden_size != self.hidden_size:
            raise ValueError("an eagle1 drafter's hidden size must equal the target's")
        for i in self.target_layers:
            if not -1 <= i <= self.target_num_layers:
                raise ValueError(f"target layer {i} outside [-1, {self.target_num_layers}]")
        if self.style == "eagle3":
            self._check_eagle3_layers()
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head == "truncated" and not (self.draft_vocab_size and 0 < self.draft_vocab_size <= self.vocab_size):
            raise ValueError("a truncated head needs 0 < draft_vocab_size <= vocab_size")
        if self.head == "lowrank" and not (self.head_rank and self.head_rank > 0):
            raise ValueError("a low-rank head needs head_rank > 0")
        return self

    def _check_eagle3_layers(self) -> None:
        """Auxiliary layers as vLLM reads them: it sorts and de-duplicates the ids, and id L is the
        pre-norm final state there but the normed one in transformers' hidden_states; so ids are
        strictly increasing and below L, and mean the same thing in both (docs/design.md
        "Checkpoints and serving formats")."""
        layers, n = self.target_layers, self.target_num_layers
        if len(layers) < 2:
            raise ValueError("an eagle3 drafter fuses several target layers (a low, a middle and a high one)")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"eagle3 target layers must be strictly increasing (vLLM sorts them), got {layers}")
        if layers[0] < 0 or layers[-1] >= n:
            raise ValueError(
                f"eagle3 target layers must lie in [0, {n - 1}] for a {n}-layer target, got {layers} "
                f"(-1 and {n} are the final state, which vLLM and transformers read differently)"
            )

    @property
    def feature_size(self) -> int:
        """Width of the concatenated target features the drafter reads."""
        return self.target_hidden_size * len(self.target_layers)

    def architecture_key(self) -> tuple:
        """Equal keys <=> same tensor names and shapes (weight-averageable, batch-draftable)."""
        return (
            "FeatureDrafter", self.style, self.target_name, self.vocab_size, self.target_hidden_size,
            tuple(self.target_layers), self.hidden_size, self.num_attention_heads, self.num_key_value_heads,
            self.head_dim, self.intermediate_size, self.head, self.draft_vocab_size, self.head_rank,
            self.repspec, self.repspec_branches, self.hybrid_rank, self.eagle1_layout,
        )

    @classmethod
    def from_target(
        cls,
        target_config,
        target_name: str,
        style: Style = "eagle1",
        head: HeadKind = "target",
        target_layers: list[int] | None = None,
        **overrides: Any,
    ) -> "DrafterConfig":
        """Shape the drafter's decoder layer like the target's (a transformers config)."""
        c = target_config
        model_type = getattr(c, "model_type", "llama")
        if model_type not in SUPPORTED_TARGET_TYPES:
            raise ValueError(
                f"target model type {model_type!r} is not supported (supported: {SUPPORTED_TARGET_TYPES})"
            )
        n_layers = int(c.num_hidden_layers)
        if target_layers is None:
            target_layers = [-1] if style == "eagle1" else default_eagle3_layers(n_layers)
        rope = dict(getattr(c, "rope_parameters", None) or {})
        rope_theta = float(rope.pop("rope_theta", getattr(c, "rope_theta", 10000.0) or 10000.0))
        rope_scaling = rope if rope.get("rope_type", "default") != "default" else None
        hidden = int(c.hidden_size)
        fields: dict[str, Any] = dict(
            style=style,
            target_name=target_name,
            target_model_type=model_type,
            vocab_size=int(c.vocab_size),
            target_hidden_size=hidden,
            target_num_layers=n_layers,
            target_layers=list(target_layers),
            hidden_size=hidden,
            num_attention_heads=int(c.num_attention_heads),
            num_key_value_heads=int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads),
            head_dim=int(getattr(c, "head_dim", None) or hidden // c.num_attention_heads),
            intermediate_size=int(c.intermediate_size),
            rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(getattr(c, "max_position_embeddings", 8192)),
            qkv_bias=model_type == "qwen2" or bool(getattr(c, "attention_bias", False)),
            o_bias=model_type != "qwen2" and bool(getattr(c, "attention_bias", False)),
            head=head,
        )
        if head == "lowrank":
            fields["head_rank"] = max(1, hidden // 4)
        fields.update(overrides)
        return cls(**fields)


def default_eagle3_layers(num_layers: int) -> list[int]:
    """vLLM's default auxiliary layers (2, L/2, L-3) as indices into hidden_states, kept below L,
    sorted and distinct; shallow targets fall back to their first layers."""
    layers = sorted({i for i in (2, num_layers // 2, num_layers - 3) if 0 <= i < num_layers})
    return layers if len(layers) >= 2 else list(range(min(3, num_layers)))
