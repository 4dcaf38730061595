"""Every modality mmtune knows, by name: the one place a new modality is registered.

A modality is one module (``image.py``, ``video.py``, ``audio.py``)
defining a :class:`~mmtune.modalities.base.Modality` and its recipe section;
adding it here makes it a key of ``model.media``, its tag a media tag in
conversations, and its branch part of multimodal models.
"""

from __future__ import annotations

from mmtune.modalities.audio import AUDIO
from mmtune.modalities.base import Modality
from mmtune.modalities.image import IMAGE
from mmtune.modalities.video import VIDEO

MODALITIES: dict[str, Modality] = {
    IMAGE.name: IMAGE,
    VIDEO.name: VIDEO,
    AUDIO.name: AUDIO,
}

