"""AsymCache for SGLang 0.5.16: a prefix cache that knows what each KV block costs to rebuild."""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def _map_checkout_subpackages() -> None:
    """Import ``patches/`` and ``kernels/`` as subpackages when running from a source checkout.

    The build backend maps them into the package on install; a checkout on ``sys.path`` (the
    current directory under ``python -m``) shadows the installed copy and lacks that mapping.
    """
    package_dir = Path(__file__).resolve().parent
    for name in ("patches", "kernels"):
        source = package_dir.parent / name / "__init__.py"
        full_name = f"{__name__}.{name}"
        if (package_dir / name).exists() or not source.exists() or full_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(
            full_name, source, submodule_search_locations=[str(source.parent)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[full_name] = module
        spec.loader.exec_module(module)
        globals()[name] = module


_map_checkout_subpackages()
