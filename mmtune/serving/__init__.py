"""``mmtune serve``: an OpenAI-compatible HTTP API (``/v1/chat/completions``, ``/v1/models``) and a browser chat
page, over the same prompt building and batched decoding loop as ``mmtune chat``.

``options`` (the server's defaults), ``errors`` (OpenAI-style error bodies), ``media_parts`` (content parts ->
files a modality reads), ``requests`` (a request body -> a conversation and decoding options), ``worker`` (the
queue and the one thread that decodes waiting requests together), ``app`` (the FastAPI routes and the page).
"""
