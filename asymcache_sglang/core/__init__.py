"""AsymCache's pure core: tree, eviction cost, latency fit, chunk policy and settings.

Nothing here imports torch or sglang, so all of it can be changed and tested without a server.
"""
