"""Package names imported on first use (PEP 562), for the packages whose public names pull in
torch or transformers: `import compose` or the `specmux` command's `--help` and flag checks
need not wait ~6 s for transformers before doing anything."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's module-level (__getattr__, __dir__): `names` maps each public name to the
    module (relative to `package`) that defines it; the module is imported at the name's first
    use and the value kept in the package's namespace."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
