#!/usr/bin/env python3
"""Runs BERTopic with its default settings on precomputed embeddings, the
reference that pulse's trends are judged against, and writes its topics and
fit time as one JSON object on stdout.

Input (--input): JSON lines of {"text": "...", "embedding": [...]}.
Output: {"engine": "bertopic", "version": "...", "labels": [topic per text,
-1 = outlier], "seconds": fit seconds, "topics": topics other than -1}.
Diagnostics go to stderr.

The fit is BERTopic's whole default path on the given embeddings: UMAP to 5
dimensions, HDBSCAN (min_cluster_size = --min-cluster-size), then its
c-TF-IDF topic representation; no embedding model is loaded. UMAP is
unseeded by default, as in BERTopic; --seed N passes BERTopic's default UMAP
with random_state=N, for repeatable labels (UMAP then runs single-threaded).
numba compiles UMAP's kernels afresh in every process, which makes the first
fit several times slower (about 20 s against 5 s for 800 texts on two
cores); --warmup fits once, untimed, before the timed fit.

    "$(scripts/reference-env)" bench/python/trends_reference.py --input e.jsonl
"""
import argparse
import json
import sys
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--min-cluster-size", type=int, default=10)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--warmup", action="store_true")
    args = parser.parse_args()

    docs, embeddings = [], []
    with open(args.input) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                docs.append(record["text"])
                embeddings.append(record["embedding"])
    embeddings = np.array(embeddings, dtype=np.float32)
    print(f"trends_reference: {embeddings.shape[0]} texts of {embeddings.shape[1]} dimensions",
          file=sys.stderr)

    # Imported late so that --help and a bad --input fail fast, before its slow import.
    import bertopic
    from bertopic import BERTopic

    def new_model():
        options = {}
        if args.seed is not None:
            from umap import UMAP

            # BERTopic's own default UMAP, plus the seed.
            options["umap_model"] = UMAP(n_neighbors=15, n_components=5, min_dist=0.0,
                                         metric="cosine", low_memory=False,
                                         random_state=args.seed)
        return BERTopic(min_topic_size=args.min_cluster_size, embedding_model=None, **options)

    if args.warmup:
        started = time.perf_counter()
        new_model().fit_transform(docs, embeddings=embeddings)
        print(f"trends_reference: warm-up fit {time.perf_counter() - started:.2f} s",
              file=sys.stderr)
    model = new_model()
    started = time.perf_counter()
    labels, _ = model.fit_transform(docs, embeddings=embeddings)
    seconds = time.perf_counter() - started
    labels = [int(label) for label in labels]
    topics = len(set(labels) - {-1})
    print(f"trends_reference: {topics} topics, {labels.count(-1)} outliers, {seconds:.2f} s",
          file=sys.stderr)
    json.dump({
        "engine": "bertopic",
        "version": bertopic.__version__,
        "labels": labels,
        "seconds": seconds,
        "topics": topics,
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
