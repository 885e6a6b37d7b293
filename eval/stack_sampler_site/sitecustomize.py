"""Starts ``eval.stack_sampler`` in every Python process when ASYMCACHE_STACK_SAMPLES is set."""

import os

if os.environ.get("ASYMCACHE_STACK_SAMPLES"):
    from eval.stack_sampler import start_from_env

    start_from_env()
