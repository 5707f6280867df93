#!/usr/bin/env python3
"""Runs the Python `hdbscan` package on a raw little-endian float32 file and
writes its labels and timings as JSON, for `pulse-bench cluster`.

Optional dependency: `pip install hdbscan` (it brings numpy and scikit-learn).
"""
import argparse
import json
import time
from importlib.metadata import version

import hdbscan
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--min-cluster-size", type=int, required=True)
    parser.add_argument("--min-samples", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    points = np.fromfile(args.input, dtype="<f4").reshape(-1, args.dim).astype(np.float64)
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=args.min_cluster_size,
        min_samples=args.min_samples,
        core_dist_n_jobs=-1,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    clusterer.fit(points)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    labels = clusterer.labels_
    with open(args.output, "w") as out:
        json.dump(
            {
                "version": version("hdbscan"),
                "seconds": wall,
                "cpu_seconds": cpu,
                "n_clusters": int(labels.max() + 1),
                "labels": labels.tolist(),
            },
            out,
        )


if __name__ == "__main__":
    main()
