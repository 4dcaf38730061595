"""Every modality mmtune knows, by name: the one place a new modality is registered.

A modality is one module (``image.py`` now; ``video.py``, ``audio.py`` next)
defining a :class:`~mmtune.modalities.base.Modality` and its recipe section;
adding it here makes it a key of ``model.media``, its tag a media tag in
conversations, and its branch part of multimodal models.
"""

from __future__ import annotations

from mmtune.modalities.base import Modality
from mmtune.modalities.image import IMAGE

MODALITIES: dict[str, Modality] = {
    IMAGE.name: IMAGE,
}

