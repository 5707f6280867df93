//! Stable trend ids across runs. A cluster that is the same trend as one of
//! the previous run (centroids close and members shared) keeps that trend's
//! id; every other cluster gets a fresh id, and the previous trends it drew
//! on are recorded as its parents (a split or a merge).

use crate::summary::cosine;
use std::collections::HashMap;

/// A trend of the previous run.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousTrend {
    pub id: i64,
    pub centroid: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchThresholds {
    /// Centroids at least this similar (cosine)...
    pub min_cosine: f32,
    /// ...and at least this share of the smaller side's members in common.
    pub min_overlap: f64,
    /// A previous trend is a parent when this share of its members in the
    /// window, or of the new cluster's members, came from it.
    pub parent_share: f64,
}

impl Default for MatchThresholds {
    fn default() -> Self {
        Self {
            min_cosine: 0.8,
            min_overlap: 0.5,
            parent_share: 0.2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    New,
    Continued,
    Split,
    Merged,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub id: i64,
    pub origin: Origin,
    /// Previous trends it drew on, other than the one it continues.
    pub parents: Vec<i64>,
}

/// Ids for clusters `0..centroids.len()`. `labels[i]` is signal `i`'s new
/// cluster (−1 noise), `previous_labels[i]` the previous run's trend id for
/// it, if that run labelled it. Fresh ids count up from `next_id`, which is
/// advanced past those handed out.
pub fn assign_ids(
    centroids: &[Vec<f32>],
    labels: &[i32],
    previous_labels: &[Option<i64>],
    previous: &[PreviousTrend],
    thresholds: &MatchThresholds,
    next_id: &mut i64,
) -> Vec<Identity> {
    let clusters = centroids.len();
    let mut sizes = vec![0usize; clusters];
    let mut previous_in_window: HashMap<i64, usize> = HashMap::new();
    let mut shared: HashMap<(usize, i64), usize> = HashMap::new();
    for (&label, &old) in labels.iter().zip(previous_labels) {
        let new = usize::try_from(label).ok().filter(|&l| l < clusters);
        if let Some(new) = new {
            sizes[new] += 1;
        }
        if let Some(old) = old {
            *previous_in_window.entry(old).or_insert(0) += 1;
            if let Some(new) = new {
                *shared.entry((new, old)).or_insert(0) += 1;
            }
        }
    }

    // Candidate pairs, best first (overlap, then members in common, then
    // centroid similarity); each side is matched at most once.
    let mut candidates = Vec::new();
    for (c, centroid) in centroids.iter().enumerate() {
        for old in previous {
            let similarity = cosine(centroid, &old.centroid);
            if similarity < thresholds.min_cosine {
                continue;
            }
            let common = shared.get(&(c, old.id)).copied().unwrap_or(0);
            let old_here = previous_in_window.get(&old.id).copied().unwrap_or(0);
            // With none of the old members in the window (it slid past
            // them) only the centroids can tell.
            let overlap = if old_here == 0 {
                1.0
            } else {
                common as f64 / sizes[c].min(old_here).max(1) as f64
            };
            if overlap >= thresholds.min_overlap {
                candidates.push((overlap, common, similarity, c, old.id));
            }
        }
    }
    candidates.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.total_cmp(&a.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    let mut continued: Vec<Option<i64>> = vec![None; clusters];
    let mut taken = std::collections::HashSet::new();
    for (_, _, _, c, old) in candidates {
        if continued[c].is_none() && taken.insert(old) {
            continued[c] = Some(old);
        }
    }

    (0..clusters)
        .map(|c| {
            let mut parents: Vec<i64> = previous
                .iter()
                .map(|old| old.id)
                .filter(|&old| Some(old) != continued[c])
                .filter(|old| {
                    let common = shared.get(&(c, *old)).copied().unwrap_or(0) as f64;
                    let old_here = previous_in_window.get(old).copied().unwrap_or(0) as f64;
                    common > 0.0
                        && (common >= thresholds.parent_share * old_here
                            || common >= thresholds.parent_share * sizes[c] as f64)
                })
                .collect();
            parents.sort_unstable();
            match continued[c] {
                Some(id) => Identity {
                    id,
                    origin: Origin::Continued,
                    parents,
                },
                None => {
                    let id = *next_id;
                    *next_id += 1;
                    let origin = match parents.len() {
                        0 => Origin::New,
                        1 => Origin::Split,
                        _ => Origin::Merged,
                    };
                    Identity {
                        id,
                        origin,
                        parents,
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previous(ids_and_centroids: &[(i64, [f32; 2])]) -> Vec<PreviousTrend> {
        ids_and_centroids
            .iter()
            .map(|(id, c)| PreviousTrend {
                id: *id,
                centroid: c.to_vec(),
            })
            .collect()
    }

    #[test]
    fn the_same_clusters_keep_their_ids_and_a_new_one_gets_a_fresh_id() {
        let centroids = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.7, 0.7]];
        let labels = [0, 0, 1, 1, 2, 2, -1];
        let old = [Some(7), Some(7), Some(3), Some(3), None, None, None];
        let mut next = 10;
        let ids = assign_ids(
            &centroids,
            &labels,
            &old,
            &previous(&[(3, [0.0, 1.0]), (7, [1.0, 0.0])]),
            &MatchThresholds::default(),
            &mut next,
        );
        assert_eq!(ids.iter().map(|i| i.id).collect::<Vec<_>>(), vec![7, 3, 10]);
        assert_eq!(ids[0].origin, Origin::Continued);
        assert_eq!(ids[2].origin, Origin::New);
        assert!(ids.iter().all(|i| i.parents.is_empty()));
        assert_eq!(next, 11);
    }

    #[test]
    fn a_split_keeps_the_id_on_the_larger_part_and_records_the_parent() {
        let centroids = vec![vec![1.0, 0.1], vec![1.0, -0.1]];
        let labels = [0, 0, 0, 1, 1];
        let old = [Some(5); 5];
        let mut next = 6;
        let ids = assign_ids(
            &centroids,
            &labels,
            &old,
            &previous(&[(5, [1.0, 0.0])]),
            &MatchThresholds::default(),
            &mut next,
        );
        assert_eq!(ids[0].id, 5);
        assert_eq!(ids[0].origin, Origin::Continued);
        assert_eq!(ids[1].id, 6);
        assert_eq!(ids[1].origin, Origin::Split);
        assert_eq!(ids[1].parents, vec![5]);
    }

    #[test]
    fn a_merge_of_two_different_trends_is_new_with_both_parents() {
        let centroids = vec![vec![0.7, 0.7]];
        let labels = [0, 0, 0, 0];
        let old = [Some(1), Some(1), Some(2), Some(2)];
        let mut next = 3;
        let ids = assign_ids(
            &centroids,
            &labels,
            &old,
            &previous(&[(1, [1.0, 0.0]), (2, [0.0, 1.0])]),
            &MatchThresholds::default(),
            &mut next,
        );
        assert_eq!(ids[0].id, 3);
        assert_eq!(ids[0].origin, Origin::Merged);
        assert_eq!(ids[0].parents, vec![1, 2]);
    }

    #[test]
    fn a_trend_whose_old_members_left_the_window_is_matched_by_centroid() {
        let ids = assign_ids(
            &[vec![1.0, 0.0]],
            &[0, 0],
            &[None, None],
            &previous(&[(4, [0.99, 0.05])]),
            &MatchThresholds::default(),
            &mut 9,
        );
        assert_eq!(ids[0].id, 4);
    }
}
