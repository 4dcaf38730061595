"""HINT (hypernetwork instruction tuning): an instruction becomes adapters once instead of a prompt every time.

``generator.py`` (encoded instruction -> adapter weights), ``insertion.py`` (hooks that add each token's
task's adapter), ``hypernetwork.py`` (encoder + generator + hooks; ``final/hint/``), ``adapt.py`` (one
task's adapters written as a standard peft LoRA adapter).
"""
