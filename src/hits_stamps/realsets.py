"""The real-pixel data sets of a transfer experiment, split by object (used by `hits-stamps run` and benchmarks).

From the HiTS 2015 supernova + star sequences and, where present, the variable-star sequences:

- the sequence objects are split into train / validation / test parts, stratified by class
  (`split_objects`); the variable stars into validation / test parts by default, or into
  train / validation / test parts when `variables_split` has three fractions (their labels come
  from Kron photometry, independent of any difference image);
- `inject`: injections and painted artefacts on the *training* objects' epochs, with the varied
  differencing (`hits_stamps.inject`);
- `real_train`: the training objects' own real candidates (supernova epochs the survey detected,
  star residuals), differenced with the varied pipeline;
- `real_val`, `real_test`: the validation and test objects' candidates, nominal differencing;
- `variables_train` (three-part `variables_split` only): the training variable stars' candidates,
  differenced with the varied pipeline;
- `variables_val`, `variables_test`: the variable stars' candidates, nominal differencing.

`check_disjoint_groups` is run over training, validation and test material before anything is
returned: no object has stamps on two sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hits_stamps.differencing import NOMINAL, VARIED
from hits_stamps.errors import HitsStampsError
from hits_stamps.inject import InjectConfig, inject_stamps
from hits_stamps.realdata import build_real, read_sequences, select_objects, split_objects
from hits_stamps.stamps import StampSet, check_disjoint_groups

SHARED_VARIABLES = Path("../shared/data/hits2015/hits2015_variables.npz")


def default_variables_path() -> Path | None:
    """../shared/data/hits2015/hits2015_variables.npz (or beside the checkout) when present, else None."""
    beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "hits2015" / SHARED_VARIABLES.name
    for candidate in (SHARED_VARIABLES, beside):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class RealSetsConfig:
    """How the real sequences are split and what is built from each part."""

    split: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train / val / test fractions of the sequence objects
    # val / test fractions of the variable stars, or train / val / test fractions (three numbers)
    variables_split: tuple[float, ...] = (0.5, 0.5)
    split_seed: int = 0  # seeds both object splits
    n_inject: int = 12_000  # injected + painted stamps from the training objects
    inject_seed: int = 0  # seeds the injections and the varied differencing
    varied: bool = True  # varied differencing for the training material (nominal for validation and test)
    inject: InjectConfig = InjectConfig()  # what is injected (placements, magnitudes, artefacts)
    object_fraction: float = 1.0  # use only this stratified, seeded fraction of the objects (a quick run)

    def __post_init__(self) -> None:
        fr = np.asarray(self.split, dtype=float)
        if fr.shape != (3,) or not np.isfinite(fr).all() or (fr < 0).any() or fr[0] <= 0 or fr[2] <= 0:
            raise HitsStampsError(f"split must be three fractions with train and test > 0; got {list(self.split)}")
        vs = np.asarray(self.variables_split, dtype=float)
        if vs.shape not in ((2,), (3,)) or not np.isfinite(vs).all() or (vs < 0).any() or vs.sum() <= 0:
            raise HitsStampsError(f"variables_split must be two fractions (val, test) or three (train, val, test); "
                                  f"got {list(self.variables_split)}")
        if self.n_inject < 0:
            raise HitsStampsError(f"n_inject must be >= 0; got {self.n_inject}")
        if not 0 < self.object_fraction <= 1:
            raise HitsStampsError(f"object_fraction must be in (0, 1]; got {self.object_fraction}")


def _some_objects(seq, cfg: RealSetsConfig):
    """`seq` restricted to `cfg.object_fraction` of its objects (stratified by class, seeded), or as it is."""
    if cfg.object_fraction >= 1:
        return seq
    keep, _ = split_objects(seq, (cfg.object_fraction, 1 - cfg.object_fraction), cfg.split_seed + 7)
    return select_objects(seq, keep)


def _labelled(s: StampSet) -> StampSet:
    keep = s.labels >= 0
    return s if keep.all() else s[keep]


def build_real_sets(
    sequences: str | Path,
    variables: str | Path | None = None,
    config: RealSetsConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, StampSet]:
    """The sets of the module doc, keyed by name (variable-star sets only when `variables` is given).

    A part that gives no stamp of either class is left out (the packaged sample is small), and
    `meta["objects"]` of each set lists its object names.
    """
    cfg = config or RealSetsConfig()
    say = progress or (lambda _msg: None)
    seq = read_sequences(sequences)
    seq = _some_objects(seq, cfg)
    train_obj, val_obj, test_obj = split_objects(seq, cfg.split, cfg.split_seed)
    variety = VARIED if cfg.varied else NOMINAL
    out: dict[str, StampSet] = {}
    if cfg.n_inject:
        say(f"injecting {cfg.n_inject} stamps into {train_obj.size} training objects")
        out["inject"] = inject_stamps(cfg.n_inject, seed=cfg.inject_seed, sequences=seq, config=cfg.inject,
                                      variety=variety, objects=train_obj)
    say("differencing the real candidates of the training, validation and test objects")
    parts = {"real_train": (train_obj, variety), "real_val": (val_obj, NOMINAL), "real_test": (test_obj, NOMINAL)}
    for name, (objects, var) in parts.items():
        if objects.size:
            out[name] = _labelled(build_real(sequences, objects=objects, variety=var, seed=cfg.inject_seed + 1))
    if variables is not None:
        vseq = _some_objects(read_sequences(variables), cfg)
        vparts = split_objects(vseq, cfg.variables_split, cfg.split_seed)
        names = ("variables_val", "variables_test") if len(vparts) == 2 else (
            "variables_train", "variables_val", "variables_test")
        for name, objects in zip(names, vparts, strict=True):
            if not objects.size:
                continue
            if name == "variables_train":
                out[name] = _labelled(build_real(variables, objects=objects, variety=variety, seed=cfg.inject_seed + 2))
            else:
                out[name] = _labelled(build_real(variables, objects=objects))
    out = {k: v for k, v in out.items() if len(v)}
    train_keys = [k for k in ("inject", "real_train", "variables_train") if k in out]
    train_side = StampSet.concat([out[k] for k in train_keys]) if train_keys else None
    groups = {k: v for k, v in out.items() if k not in train_keys}
    if train_side is not None:
        groups["training"] = train_side
    check_disjoint_groups(groups)
    for s in out.values():
        s.meta["objects"] = sorted(set(s.groups.tolist()))
    return out
