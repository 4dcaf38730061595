"""Batched decoding for one model or several combined at every step (proxy tuning).

``decoding`` holds the loop (left padding, lockstep KV caches, greedy / top-p
sampling), ``proxy`` the proxy-tuning arithmetic and its compatibility checks,
``batch`` the ``mmtune generate`` command (prompt file in, JSONL out).
"""
