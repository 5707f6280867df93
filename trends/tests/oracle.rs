//! Property test: on small random blob sets, pulse's exact HDBSCAN finds
//! what the `hdbscan` crate (an independent implementation) finds. That
//! crate counts a point among its own neighbours, so its `min_samples` is
//! ours + 1. Mutual-reachability distances tie often (an edge weighs at
//! least both core distances), and equally light spanning trees can put a
//! boundary point on either side: on such a case the Python package's own
//! `generic` and `prims_kdtree` gave pulse's labels and its `boruvka_kdtree`
//! the crate's (ARI 0.989 between them). On another, all three of the
//! package's algorithms agreed with pulse and the crate put one background
//! point into the other cluster (ARI 0.94 on 66 points). On a third, three
//! outliers that are each other's `min_samples`-th neighbours (so two of
//! them share a core distance) make a cluster of their own in pulse and
//! are noise in the crate; the package's `generic` and `prims_kdtree` said
//! noise too, while its `boruvka_kdtree` made pulse's fourth cluster on two
//! of eight orderings of the same points. So the test asks for cluster
//! counts at most one apart and the same label for at least 95 % of the
//! points, not identical results, and keeps `min_cluster_size` at 6 or
//! more: with 3 to 5, uniform blobs split into sub-clusters whose number
//! the package's own algorithms disagree on.

use ::hdbscan::{Hdbscan, HdbscanHyperParams};
use proptest::prelude::*;
use pulse_trends::quality::adjusted_rand_index;
use pulse_trends::{Params, hdbscan};
use std::collections::{HashMap, HashSet};

/// Points around `centres` (uniform noise in a unit box) plus uniform
/// background points, as rows.
fn blobs(centres: &[Vec<f32>], per_blob: usize, background: usize, noise: &[f32]) -> Vec<Vec<f32>> {
    let dim = centres[0].len();
    let mut next = noise.iter().cycle();
    let mut rows = Vec::new();
    for centre in centres {
        for _ in 0..per_blob {
            rows.push(centre.iter().map(|c| c + next.next().unwrap()).collect());
        }
    }
    for _ in 0..background {
        rows.push((0..dim).map(|_| next.next().unwrap() * 12.0).collect());
    }
    rows
}

/// Share of points whose label matches once each of `theirs`' clusters is
/// mapped to the cluster of `ours` holding most of its points (noise to
/// noise); a mapping that sends two clusters to one counts as no match.
fn agreement(theirs: &[i32], ours: &[i32]) -> f64 {
    let mut votes: HashMap<i32, HashMap<i32, usize>> = HashMap::new();
    for (&t, &o) in theirs.iter().zip(ours) {
        *votes.entry(t).or_default().entry(o).or_default() += 1;
    }
    let mut mapping: HashMap<i32, i32> = HashMap::new();
    for (&t, counts) in &votes {
        let best = if t < 0 {
            -1
        } else {
            counts
                .iter()
                .max_by_key(|(label, count)| (**count, -**label))
                .map_or(-1, |(label, _)| *label)
        };
        mapping.insert(t, best);
    }
    let targets: HashSet<i32> = mapping.values().filter(|&&l| l >= 0).copied().collect();
    if targets.len() < mapping.values().filter(|&&l| l >= 0).count() {
        return 0.0;
    }
    let agreeing = theirs
        .iter()
        .zip(ours)
        .filter(|&(t, o)| mapping[t] == *o)
        .count();
    agreeing as f64 / ours.len() as f64
}

fn case() -> impl Strategy<Value = (Vec<Vec<f32>>, usize, usize)> {
    (
        2usize..=6,
        2usize..=5,
        15usize..=50,
        0usize..=10,
        6usize..=12,
        1usize..=8,
    )
        .prop_flat_map(
            |(dim, n_blobs, per_blob, background, min_cluster_size, min_samples)| {
                let centres = proptest::collection::vec(
                    proptest::collection::vec(-15.0f32..15.0, dim),
                    n_blobs,
                );
                let noise = proptest::collection::vec(-1.0f32..1.0, 997);
                (centres, noise).prop_map(move |(centres, noise)| {
                    (
                        blobs(&centres, per_blob, background, &noise),
                        min_cluster_size,
                        min_samples,
                    )
                })
            },
        )
}

proptest! {
    // A fixed seed: on sets this small the answer itself can hang on a tie
    // (see above); 1 case in 4,500 fell under the bar with random seeds, so
    // a random seed would fail CI now and then for no change of pulse's.
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0c1e),
        ..ProptestConfig::with_cases(48)
    })]

    #[test]
    fn pulse_agrees_with_the_hdbscan_crate((rows, min_cluster_size, min_samples) in case()) {
        let dim = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut params = Params::new(min_cluster_size);
        params.min_samples = Some(min_samples);
        let ours = hdbscan(&flat, dim, &params).unwrap();

        let theirs = Hdbscan::new(
            &rows,
            HdbscanHyperParams::builder()
                .min_cluster_size(min_cluster_size)
                .min_samples(min_samples + 1)
                .build(),
        )
        .cluster()
        .unwrap();
        let their_clusters = theirs.iter().filter(|&&l| l >= 0).collect::<HashSet<_>>().len();
        prop_assert!(
            ours.n_clusters.abs_diff(their_clusters) <= 1,
            "{} clusters against the crate's {}",
            ours.n_clusters,
            their_clusters
        );
        let agreement = agreement(&theirs, &ours.labels);
        prop_assert!(
            agreement >= 0.95,
            "{:.1} % of points agree with the hdbscan crate (ARI {:.3})",
            agreement * 100.0,
            adjusted_rand_index(&theirs, &ours.labels)
        );
    }
}
