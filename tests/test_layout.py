"""The layers the folders promise: the core imports neither torch nor sglang."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import asymcache_sglang.core


def test_core_imports_neither_torch_nor_sglang():
    modules = [m.name for m in pkgutil.iter_modules(asymcache_sglang.core.__path__)]
    assert {"tree", "cost", "latency_fit", "chunk_policy", "config"} <= set(modules)
    imports = "; ".join(f"import asymcache_sglang.core.{name}" for name in modules)
    loaded = "{m.split('.')[0] for m in sys.modules}"
    check = f"import sys; print(sorted({loaded} & {{'torch', 'sglang'}}))"
    out = subprocess.run(
        [sys.executable, "-c", f"{imports}; {check}"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
