"""The server's settings: the one home of their defaults (the ``mmtune serve`` flags show them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "MMTUNE_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    """Loopback by default: the server is reachable from other machines only when asked (``--host 0.0.0.0``)."""
    port: int = 8000
    api_key: str | None = None
    """When set, every ``/v1`` request must send ``Authorization: Bearer KEY`` (else 401)."""
    media_root: Path | None = None
    """Local paths and ``file://`` URLs in media parts must resolve inside this folder; None refuses them
    (base64 data URLs are always accepted)."""
    max_batch_size: int = 8
    """Requests decoded together by the worker (1 serves them one by one)."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests after the first one arrives, so that clients sending at the
    same moment share a batch."""
    max_request_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted (413 beyond): base64 media make requests large."""
    max_media_items: int = 8
    """Most media parts (images, videos, audio clips) in one request."""
