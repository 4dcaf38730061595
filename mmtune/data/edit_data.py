"""The edit task's data: every triplet dataset of a recipe read, reported and split (seeded) into train and val.

    data.datasets -> cards (``data.sources``) -> ``edit_formats.read_triplets`` -> one report line each
        -> train / val split

Kept apart from the readers (``edit_formats``) and the batches
(``edit_triplets``), which import nothing of each other's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtune.config.schema import EditDataConfig
from mmtune.data.edit_formats import read_triplets
from mmtune.data.edit_triplets import Triplet
from mmtune.data.sources import resolve_source
from mmtune.errors import DataError


@dataclass
class EditData:
    train: list[Triplet]
    val: list[Triplet]
    reports: list[str]
    """One line per dataset: what was read, skipped (and why), resized."""


def load_edit_data(cfg: EditDataConfig, *, seed: int) -> EditData:
    """Read every dataset of ``cfg`` into triplets and split off the validation samples (seeded)."""
    if not cfg.datasets:
        raise DataError("data.datasets is empty: give at least one triplet dataset (a card or a path)",
                        reason="no data")
    samples, reports = [], []
    for spec in cfg.datasets:
        source = resolve_source(spec)
        read = read_triplets(source, on_bad_sample=cfg.on_bad_sample)
        triplets = read.triplets[: spec.max_samples] if spec.max_samples else read.triplets
        samples.extend(triplets)
        reports.append(read.report_line(len(triplets)))
    if not samples:
        raise DataError("no usable triplet in data.datasets (" + "; ".join(reports) + ")", reason="empty dataset")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(int(round(cfg.val_fraction * len(samples))), cfg.val_max_samples) if cfg.val_fraction else 0
    val = [samples[i] for i in sorted(order[:n_val])]
    train = [samples[i] for i in sorted(order[n_val:])]
    return EditData(train, val, reports)
