"""marl: multi-agent reinforcement learning on PettingZoo, in PyTorch.

The env package lives in the repository's `envs/` folder and installs as `marl.envs`
(pyproject.toml's package-dir), so a user's own top-level `envs` package (a name many research
projects use) cannot shadow it. In a source checkout (on PYTHONPATH, or installed editable) the
finder below gives `marl.envs` that folder of the same checkout.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SOURCE_PACKAGES = {f"marl.{name}": _HERE.parent / name for name in ("envs", "single_agent")}


class _SourceLayout(importlib.abc.MetaPathFinder):
    """Finds `marl.envs` (and `marl.single_agent`) in the checkout's top-level folders."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _SOURCE_PACKAGES.get(fullname)
        if folder is None or (_HERE / folder.name).exists() or not (folder / "__init__.py").is_file():
            return None  # an installed marl holds the package itself
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


if not any(type(f).__name__ == "_SourceLayout" for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceLayout())
