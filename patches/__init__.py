"""Seams into SGLang 0.5.16: one module per wrapped SGLang function, registered by the plugin.

Each module defines ``TARGET`` (the dotted path), ``HOOK_TYPE`` and ``hook``. Each hook starts with
one of ``asymcache_sglang.handoff``'s guards and does nothing when AsymCache is off; what hooks
hand each other goes through that module too.
"""
