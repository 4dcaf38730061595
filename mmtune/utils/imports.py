"""Import user code named in a recipe (``package.module:name``): explicit, no registry side effects."""

from __future__ import annotations

import importlib

from mmtune.errors import ConfigError


def import_object(path: str, key: str):
    """``package.module:name`` -> the object, with a clear error naming the recipe key."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: '{path}' is neither a built-in nor a 'package.module:name' import path")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import '{path}': {exc}") from None
