"""Seams into SGLang 0.5.16: one module per wrapped SGLang function, registered by the plugin.

Each module defines ``TARGET`` (the dotted path), ``HOOK_TYPE`` and ``hook``; each hook does
nothing unless the scheduler's tree cache is a ``HoleAwareRadixCache``.
"""
