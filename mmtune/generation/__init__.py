"""Generation: one batched decoding loop for text and multimodal models, alone or combined (proxy tuning).

``options`` holds the decoding options, ``prompts`` turns conversations (with
media) into what a model decodes from, ``decoding`` the loop (left padding,
lockstep KV caches, greedy / top-p sampling), ``proxy`` the proxy-tuning
arithmetic and its checks, ``chat`` the interactive command, ``batch`` the
``mmtune generate`` prompt files, ``continuation`` raw continuation of
rendered prompts (data builders), ``commands`` the command-line glue.
"""
