"""Our p_real next to ZTF's own rb / drb scores, one row per alert packet (docs/survey-example.md).

    python scripts/ztf_side_by_side.py ALERTS_DIR SCORES.csv

ALERTS_DIR: the folder of ZTF .avro packets given to `hits-stamps predict`; SCORES.csv: its output
(with `--uncertainty`). Prints a Markdown table and the Spearman rank correlation of p_real with rb.
A sanity check, not a benchmark: the packets carry no human labels.
"""

from __future__ import annotations

import argparse
import csv
import warnings

import numpy as np
from scipy.stats import spearmanr

from hits_stamps.io import read_stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("alerts", help="folder (or file) of ZTF alert packets")
    parser.add_argument("scores", help="CSV written by hits-stamps predict --uncertainty")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped packets were already reported by predict
        alerts = read_stamps(args.alerts)
    col = {k: dict(zip(alerts.ids.tolist(), alerts.columns[k].tolist(), strict=True))
           for k in ("objectId", "rb", "drb", "isdiffpos", "padded")}
    with open(args.scores, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print("| candid | objectId | isdiffpos | edge-padded | p_real | p_std | mutual information | ZTF rb | ZTF drb |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        i = r["id"]
        drb = col["drb"][i]
        print(f"| {i} | {col['objectId'][i]} | {'t' if col['isdiffpos'][i] == 1 else 'f'} "
              f"| {'yes' if col['padded'][i] else 'no'} | {float(r['p_real']):.3f} | {float(r['p_std']):.3f} "
              f"| {float(r['mutual_information']):.4f} | {col['rb'][i]:.3f} "
              f"| {'-' if np.isnan(drb) else f'{drb:.3f}'} |")
    p = np.array([float(r["p_real"]) for r in rows])
    rb = np.array([col["rb"][r["id"]] for r in rows])
    print(f"\nSpearman rank correlation of p_real with rb over {len(rows)} packets: {spearmanr(p, rb).statistic:.2f}")


if __name__ == "__main__":
    main()
