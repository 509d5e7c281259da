"""`StampSet`: the one in-memory container every part of hits-stamps reads and writes.

Images are (N, H, W, C) float32, channels last (HiTS: 21x21x4, channels template, science,
difference, SNR). Labels are 1 (real), 0 (bogus) or -1 (unknown). Optional per-stamp arrays:
`snr` (float), `kind` (str), `ids` (str), `groups` (str: the astronomical object or sequence a stamp
comes from) and free numeric `columns` (e.g. observing conditions). `meta` is a JSON-serialisable
dict for the whole set.

Stamps of one object are not independent (two epochs of one supernova share its host, its PSF
history and its template), so sets of real pixels are split by `groups`: `split` keeps every
group on one side, and `check_disjoint_groups` refuses a pair of sets that share an object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHANNELS: tuple[str, ...] = ("template", "science", "difference", "snr")
LABEL_NAMES: dict[int, str] = {1: "real", 0: "bogus", -1: "unknown"}


def _as_str_array(values, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {arr.shape}")
    return arr.astype(str)


@dataclass
class StampSet:
    """A set of stamps with labels and optional per-stamp metadata.

    Parameters
    ----------
    images : (N, H, W, C) float32 array
    labels : (N,) int array of 1 (real), 0 (bogus), -1 (unknown); defaults to all -1
    snr : (N,) float array, optional: signal-to-noise of the candidate
    kind : (N,) str array, optional: what made the candidate (`sn`, `cosmic_ray`, ...)
    ids : (N,) str array, optional: unique identifiers; generated as `stamp_00000` when missing
    groups : (N,) str array, optional: the object (or sequence) each stamp comes from; stamps
        without one (e.g. simulated scenes, each its own object) leave it None
    channels : channel names, length C; defaults to the HiTS four when C == 4
    columns : dict of (N,) numeric arrays, e.g. observing conditions per stamp
    meta : free JSON-serialisable metadata for the whole set
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    snr: np.ndarray | None = None
    kind: np.ndarray | None = None
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None
    channels: tuple[str, ...] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, H, W, C); got {images.shape}")
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be floating point; got dtype {images.dtype}")
        self.images = images.astype(np.float32, copy=False)
        n, _, _, c = self.images.shape
        if self.labels is None:
            self.labels = np.full(n, -1, dtype=np.int64)
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match images; got {labels.shape}")
        if labels.size and labels.dtype.kind not in "iub":
            if labels.dtype.kind != "f" or not np.all(np.equal(np.mod(labels, 1), 0)):
                raise ValueError(f"labels must be integers in {{-1, 0, 1}}; got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        bad = ~np.isin(labels, (-1, 0, 1))
        if bad.any():
            found = sorted(set(labels[bad].tolist()))[:5]
            raise ValueError(f"labels must be in {{-1, 0, 1}}; found {found}")
        self.labels = labels
        if self.snr is not None:
            snr = np.asarray(self.snr, dtype=np.float64)
            if snr.shape != (n,):
                raise ValueError(f"snr must have shape ({n},); got {snr.shape}")
            self.snr = snr
        if self.kind is not None:
            self.kind = _as_str_array(self.kind, n, "kind")
        if self.ids is None:
            self.ids = np.array([f"stamp_{i:07d}" for i in range(n)])
        self.ids = _as_str_array(self.ids, n, "ids")
        if self.groups is not None:
            self.groups = _as_str_array(self.groups, n, "groups")
        if self.channels is None:
            self.channels = CHANNELS if c == len(CHANNELS) else tuple(f"ch{i}" for i in range(c))
        self.channels = tuple(str(ch) for ch in self.channels)
        if len(self.channels) != c:
            raise ValueError(f"channels must name {c} channels; got {len(self.channels)}")
        cols = {}
        for name, values in self.columns.items():
            arr = np.asarray(values)
            if arr.shape != (n,):
                raise ValueError(f"column {name!r} must have shape ({n},); got {arr.shape}")
            cols[str(name)] = arr
        self.columns = cols
        self.meta = dict(self.meta)

    # ----------------------------------------------------------------- basic protocol
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.images.shape)  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of one stamp."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __getitem__(self, index) -> StampSet:
        """Select stamps by integer, slice, integer array or boolean mask; returns a StampSet."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        return StampSet(
            images=self.images[idx],
            labels=self.labels[idx],
            snr=None if self.snr is None else self.snr[idx],
            kind=None if self.kind is None else self.kind[idx],
            ids=self.ids[idx],
            groups=None if self.groups is None else self.groups[idx],
            channels=self.channels,
            columns={k: v[idx] for k, v in self.columns.items()},
            meta=dict(self.meta),
        )

    @classmethod
    def concat(cls, sets: Sequence[StampSet]) -> StampSet:
        """Concatenate sets with the same stamp shape and channels.

        Optional arrays present in only some sets are filled (`snr` NaN, `kind` "unknown",
        `groups` the stamp's own id, i.e. each such stamp its own object); columns are kept only
        where every set has them.
        """
        if not sets:
            raise ValueError("concat needs at least one StampSet")
        first = sets[0]
        for s in sets[1:]:
            if s.images.shape[1:] != first.images.shape[1:]:
                raise ValueError(
                    f"cannot concatenate stamps of shape {s.images.shape[1:]} "
                    f"with {first.images.shape[1:]}"
                )
            if s.channels != first.channels:
                raise ValueError(f"channel names differ: {s.channels} vs {first.channels}")
        any_snr = any(s.snr is not None for s in sets)
        any_kind = any(s.kind is not None for s in sets)
        any_groups = any(s.groups is not None for s in sets)
        common_cols = set(first.columns)
        for s in sets[1:]:
            common_cols &= set(s.columns)
        return cls(
            images=np.concatenate([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            snr=np.concatenate(
                [s.snr if s.snr is not None else np.full(len(s), np.nan) for s in sets]
            )
            if any_snr
            else None,
            kind=np.concatenate(
                [s.kind if s.kind is not None else np.full(len(s), "unknown") for s in sets]
            )
            if any_kind
            else None,
            ids=np.concatenate([s.ids for s in sets]),
            groups=np.concatenate([s.groups if s.groups is not None else s.ids for s in sets]) if any_groups else None,
            channels=first.channels,
            columns={k: np.concatenate([s.columns[k] for s in sets]) for k in sorted(common_cols)},
            meta=dict(first.meta),
        )

    # ----------------------------------------------------------------- summaries and splits
    def class_balance(self) -> dict[str, int]:
        """Counts per label name, e.g. {"real": 10, "bogus": 12, "unknown": 0}."""
        return {name: int(np.sum(self.labels == lab)) for lab, name in LABEL_NAMES.items()}

    def kind_counts(self) -> dict[str, int]:
        if self.kind is None:
            return {}
        names, counts = np.unique(self.kind, return_counts=True)
        return {str(k): int(c) for k, c in zip(names, counts, strict=True)}

    def split(
        self,
        fractions: Sequence[float] = (0.8, 0.2),
        seed: int = 0,
        stratify: bool = True,
        groups: np.ndarray | None = None,
    ) -> list[StampSet]:
        """Split into len(fractions) disjoint sets, stratified by label, reproducible by seed.

        Whole groups (e.g. one astronomical object) go to one side, so no source appears in two
        parts; stratification then acts on the group's majority label, and the fractions count
        groups, not stamps. The groups are `groups` when given, else the set's own `groups`; a set
        without groups is split stamp by stamp. An 80/20 split of 4,026 ungrouped stamps gives
        3,220 / 806.
        """
        fr = np.asarray(fractions, dtype=float)
        if fr.ndim != 1 or len(fr) < 2 or np.any(fr <= 0):
            raise ValueError(f"fractions must be >= 2 positive numbers; got {list(fractions)}")
        fr = fr / fr.sum()
        rng = np.random.default_rng(seed)
        if groups is None:
            groups = self.groups
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (len(self),):
                raise ValueError(f"groups must have shape ({len(self)},); got {groups.shape}")
            uniq, inverse = np.unique(groups, return_inverse=True)
            counts = np.zeros((len(uniq), 3), dtype=np.int64)  # (G, 3): labels -1, 0, 1 per group
            np.add.at(counts, (inverse, self.labels + 1), 1)
            g_label = counts.argmax(axis=1) - 1  # majority label; ties go to the lower label
            parts = _stratified_parts(g_label if stratify else np.zeros(len(uniq)), fr, rng)
            return [self[np.flatnonzero(np.isin(inverse, p))] for p in parts]
        strat = self.labels if stratify else np.zeros(len(self), dtype=np.int64)
        return [self[np.sort(p)] for p in _stratified_parts(strat, fr, rng)]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: size, channels, class balance, kinds, non-finite counts, ranges.

        `nan_count` counts non-finite pixels (NaN or +-inf) in all channels; `nan_count_per_channel`
        and `stamps_with_nan_per_channel` break it down by channel name. `ranges` gives
        (min, max) of the finite pixels per channel, or None for a channel with no finite pixel.
        """
        n, h, w, c = self.images.shape
        finite = np.isfinite(self.images)
        ranges: dict[str, tuple[float, float] | None] = {}
        for i, ch in enumerate(self.channels):
            vals = self.images[..., i][finite[..., i]]
            ranges[ch] = (float(vals.min()), float(vals.max())) if vals.size else None
        bad = ~finite
        bad_per_channel = bad.sum(axis=(0, 1, 2))  # (C,)
        stamps_per_channel = bad.any(axis=(1, 2)).sum(axis=0)  # (C,)
        return {
            "n": n,
            "shape": [h, w, c],
            "channels": list(self.channels),
            "class_balance": self.class_balance(),
            "kinds": self.kind_counts(),
            "nan_count": int(bad_per_channel.sum()),
            "stamps_with_nan": int(bad.any(axis=(1, 2, 3)).sum()),
            "nan_count_per_channel": {ch: int(k) for ch, k in zip(self.channels, bad_per_channel, strict=True)},
            "stamps_with_nan_per_channel": {
                ch: int(k) for ch, k in zip(self.channels, stamps_per_channel, strict=True)
            },
            "ranges": ranges,
            "columns": sorted(self.columns),
            "groups": None if self.groups is None else int(np.unique(self.groups).size),
            "duplicate_ids": len(self.duplicate_ids()),
        }

    def duplicate_ids(self) -> dict[str, int]:
        """Ids that occur more than once, with their counts (empty when every id is unique)."""
        uniq, counts = np.unique(self.ids, return_counts=True)
        many = counts > 1
        return {str(i): int(c) for i, c in zip(uniq[many], counts[many], strict=True)}

    def n_groups(self) -> int:
        """Number of distinct objects (each stamp its own object when the set has no groups)."""
        return int(np.unique(self.groups).size) if self.groups is not None else len(self)


def _stratified_parts(strata: np.ndarray, fractions: np.ndarray, rng) -> list[np.ndarray]:
    """Indices per part; each stratum is cut by the cumulative fractions (rounded)."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for value in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == value))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    return [np.concatenate(p) if p else np.array([], dtype=int) for p in parts]


class GroupLeakError(ValueError):
    """Two sets that must be disjoint by object share objects."""


def describe_duplicates(dups: dict[str, int], limit: int = 3) -> str:
    """'N ids occur more than once (a x2, b x3, ...)' for a `duplicate_ids()` result."""
    shown = ", ".join(f"{i!r} x{c}" for i, c in list(dups.items())[:limit])
    return f"{len(dups)} ids occur more than once ({shown}{', ...' if len(dups) > limit else ''})"


def check_disjoint_groups(named_sets: dict[str, StampSet]) -> None:
    """Raise `GroupLeakError` if any object (group) has stamps in two of the named sets.

    Sets without groups count each stamp as its own object (keyed by id), so two ungrouped sets
    collide only on a shared id. The message names both sets, how many objects they share and a
    few of them.
    """
    keys = {name: set((s.groups if s.groups is not None else s.ids).tolist()) for name, s in named_sets.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = keys[a] & keys[b]
            if shared:
                few = ", ".join(sorted(shared)[:3])
                raise GroupLeakError(
                    f"sets {a!r} and {b!r} share {len(shared)} object(s) (e.g. {few}); real pixels must be "
                    "split by object"
                )
