"""Request bodies of the OpenAI API as specmux serves them (pydantic, strict: a number given as a
string or a boolean is refused, not coerced), and their translation into `Composer.generate`
options.

Fields the OpenAI clients send that do not change the output (user, metadata, stream_options
without usage...) are accepted and ignored. Fields that would change the output law in a way
lossless verification cannot honour (n > 1, logprobs, penalties, logit_bias, tools) are refused
with a 400 naming them, rather than silently ignored."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# fields the OpenAI API has and this server cannot honour -> the values that mean "not used"
UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []),
    "functions": (None, []), "tool_choice": (None, "none"), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "presence_penalty": (None, 0.0), "frequency_penalty": (None, 0.0),
    "repetition_penalty": (None, 1.0), "response_format": (None, {"type": "text"}),
}


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="text, or text parts (other part types are refused)")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Sampling(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(strict=True, extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="vLLM's extension; 0 = off")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int | None = Field(None, ge=1, le=1, description="one choice per request")
    # specmux's own fields (extra_body in the openai client)
    strategy: str | None = None
    drafter: str | None = None
    tree: Literal["auto"] | dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    def refuse_unsupported(self) -> None:
        for key, harmless in UNSUPPORTED.items():
            if key in (self.model_extra or {}) and self.model_extra[key] not in harmless:
                raise ValueError(f"{key}={self.model_extra[key]!r} is not supported by this server "
                                 "(it would change what lossless verification returns)")

    def generate_options(self, default_temperature: float) -> dict[str, Any]:
        """Keywords for `Composer.generate` (the server's defaults fill the rest)."""
        self.refuse_unsupported()
        opts: dict[str, Any] = {"temperature": default_temperature if self.temperature is None else self.temperature}
        if self.max_tokens is not None:
            opts["max_new_tokens"] = self.max_tokens
        for key in ("top_p", "top_k", "seed", "stop", "tree", "drafter"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        return opts


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def generate_options(self, default_temperature: float) -> dict[str, Any]:
        opts = super().generate_options(default_temperature)
        if self.max_completion_tokens is not None:
            opts["max_new_tokens"] = self.max_completion_tokens
        return opts

    def chat_messages(self) -> list[dict[str, str]]:
        # "developer" is the newer name of "system" in the OpenAI API; chat templates know "system"
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] = Field(description="text, or one text in a list, or token ids")

    def prompt_value(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            if len(p) != 1:
                raise ValueError(f"one prompt per request: got a list of {len(p)} prompts")
            p = p[0]
        if isinstance(p, list) and not p:
            raise ValueError("prompt is empty")
        return p


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI API's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


