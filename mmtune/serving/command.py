"""``mmtune serve MODEL_OR_RUN``: load the model (or a proxy combination) as ``mmtune chat`` does and run the
server with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmtune.errors import ConfigError
from mmtune.generation.cli_args import add_generation_flags, add_proxy_flags, generation_options, given
from mmtune.serving.options import API_KEY_ENV, ServeOptions

_DEFAULTS = ServeOptions()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_OR_RUN", help="run directory, model directory, hub name or alias")
    p.add_argument("--host", default=argparse.SUPPRESS,
                   help=f"address to bind (default {_DEFAULTS.host}: this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=argparse.SUPPRESS, help=f"port (default {_DEFAULTS.port})")
    p.add_argument("--served-name", default=None,
                   help="the model name clients send and /v1/models lists (default: MODEL_OR_RUN as given)")
    p.add_argument("--api-key", default=argparse.SUPPRESS,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key)")
    p.add_argument("--media-root", type=Path, default=argparse.SUPPRESS,
                   help="folder that local paths and file:// URLs in media parts must be inside (default: none "
                        "accepted; base64 data URLs always are)")
    p.add_argument("--max-batch-size", type=int, default=argparse.SUPPRESS,
                   help=f"requests decoded together (default {_DEFAULTS.max_batch_size})")
    p.add_argument("--batch-wait-ms", type=float, default=argparse.SUPPRESS,
                   help=f"wait for more requests before a batch starts (default {_DEFAULTS.batch_wait_ms})")
    p.add_argument("--max-request-bytes", type=int, default=argparse.SUPPRESS,
                   help=f"largest request body (default {_DEFAULTS.max_request_bytes})")
    p.add_argument("--max-media-items", type=int, default=argparse.SUPPRESS,
                   help=f"most media parts per request (default {_DEFAULTS.max_media_items})")
    add_generation_flags(p, batched=False)
    add_proxy_flags(p)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The server's options from the flags given (and ``$MMTUNE_API_KEY``); bad values are one line."""
    opts = ServeOptions(**given(args, "host", "port", "api_key", "media_root", "max_batch_size", "batch_wait_ms",
                                "max_request_bytes", "max_media_items"))
    if opts.api_key is None and os.environ.get(API_KEY_ENV):
        opts.api_key = os.environ[API_KEY_ENV]
    for flag, value in (("--max-batch-size", opts.max_batch_size), ("--max-request-bytes", opts.max_request_bytes),
                        ("--max-media-items", opts.max_media_items)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not 0 <= opts.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {opts.port}")
    if opts.media_root is not None and not opts.media_root.is_dir():
        raise ConfigError(f"--media-root {opts.media_root}: not a folder")
    return opts


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mmtune.serving.app import create_app
    except ImportError as exc:
        raise ConfigError(f"mmtune serve needs the 'serve' extra (pip install 'mmtune[serve]'): {exc}") from None
    from mmtune.generation.commands import load_model_or_proxy

    opts = serve_options(args)
    model, tokenizer = load_model_or_proxy(args, args.model)
    app = create_app(model, tokenizer, args.served_name or args.model, opts, generation_options(args))
    print(f"mmtune serve: {args.served_name or args.model} on http://{opts.host}:{opts.port} "
          f"(chat page at /, API at /v1)", file=sys.stderr)
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning")
    return 0
