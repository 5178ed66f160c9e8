"""Helpers for the tests (and benchmarks): real GGUF files, real servers. Never shipped, never imported by app/."""
