"""Recall per stamp kind of classifiers (e.g. the TSTR classifiers the generation benchmark trains) on a test file.

    python experiments/tstr_per_kind.py runs/s5/final_g0/simulated/judge/tstr_classifier \\
        runs/s3/final/simulated/judge/tstr_classifier --test-file runs/clfbench/sim_test.npz --n-test 4000
"""

from __future__ import annotations

import argparse

import numpy as np

from hits_stamps.io import read_stamps
from hits_stamps.training.modeldir import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classifier_dirs", nargs="+")
    ap.add_argument("--test-file", required=True)
    ap.add_argument("--n-test", type=int, default=0, help="the first N stamps of the file (0: all)")
    args = ap.parse_args()
    test = read_stamps(args.test_file)
    if args.n_test:
        test = test[np.arange(min(args.n_test, len(test)))]
    if test.kind is None:
        raise SystemExit(f"{args.test_file} has no stamp kinds")
    kinds = sorted(set(test.kind.tolist()))
    for i, d in enumerate(args.classifier_dirs, 1):
        print(f"[{i}] {d}")
    print(f"{'kind':16s} {'n':>5s} " + " ".join(f"{f'[{i}]':>8s}" for i in range(1, len(args.classifier_dirs) + 1)))
    preds = [load_model(d).predict(test) for d in args.classifier_dirs]
    for k in kinds + ["all"]:
        m = np.ones(len(test), bool) if k == "all" else test.kind == k
        print(f"{k:16s} {int(m.sum()):5d} " + " ".join(f"{(pr[m] == test.labels[m]).mean():8.3f}" for pr in preds))


if __name__ == "__main__":
    main()
