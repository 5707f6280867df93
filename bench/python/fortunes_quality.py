#!/usr/bin/env python3
"""Scores clusterings of the fortunes against their categories, for the
quality section of docs/benchmarks.md.

Inputs: the fortunes as JSON lines with `category` and `text` (one per
fortune, in the order of the embeddings), their embeddings as JSON lines with
an `embedding` field (`pulse embed`), and any number of `pulse cluster`
outputs over the same embeddings. With `--bertopic`, also runs BERTopic's
default clustering path on them (UMAP to 5 dimensions, cosine, 15
neighbours, min_dist 0, then HDBSCAN with excess of mass) as the reference.

Optional dependencies: scikit-learn; `hdbscan` and `umap-learn` for
`--bertopic`.
"""
import argparse
import json
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score, v_measure_score


def scores(categories, labels):
    clustered = labels >= 0
    return {
        "clusters": int(labels.max() + 1),
        "noise": float(1 - clustered.mean()),
        "v_measure": v_measure_score(categories, labels),
        "ari": adjusted_rand_score(categories, labels),
        "clustered_v_measure": v_measure_score(categories[clustered], labels[clustered]),
        "clustered_ari": adjusted_rand_score(categories[clustered], labels[clustered]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fortunes", required=True)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--bertopic", action="store_true")
    parser.add_argument("--min-cluster-size", type=int, default=10)
    parser.add_argument("clusterings", nargs="*")
    args = parser.parse_args()

    with open(args.fortunes) as f:
        categories = np.array([json.loads(line)["category"] for line in f])
    for path in args.clusterings:
        with open(path) as f:
            result = json.load(f)
        labels = np.array(result["labels"])
        print(json.dumps({"clustering": path, **scores(categories, labels)}))
    if args.bertopic:
        import hdbscan
        import umap

        with open(args.embeddings) as f:
            vectors = np.array([json.loads(line)["embedding"] for line in f], dtype=np.float32)
        started = time.perf_counter()
        reduced = umap.UMAP(
            n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42
        ).fit_transform(vectors)
        umap_seconds = time.perf_counter() - started
        started = time.perf_counter()
        labels = hdbscan.HDBSCAN(
            min_cluster_size=args.min_cluster_size, cluster_selection_method="eom"
        ).fit(reduced).labels_
        hdbscan_seconds = time.perf_counter() - started
        print(json.dumps({
            "clustering": f"bertopic-like, min_cluster_size {args.min_cluster_size}",
            "umap_seconds": umap_seconds,
            "hdbscan_seconds": hdbscan_seconds,
            **scores(categories, labels),
        }))


if __name__ == "__main__":
    main()
