"""Starts ``eval.stack_sampler`` in every Python process (no-op without ASYMCACHE_STACK_SAMPLES)."""

from eval.stack_sampler import start_from_env

start_from_env()
