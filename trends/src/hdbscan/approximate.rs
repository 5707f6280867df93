//! Approximate mode for large n: the k nearest neighbours come from an
//! inverted file instead of all pairs, and the pieces the neighbour graph
//! leaves apart are joined through the same file.
//!
//! The file: k-means (on a sample) cuts the points into about √n lists,
//! cutting again any list that grew past twice the average; each list is
//! compared, by the same blocked matrix multiplies as the
//! exact mode, with the lists whose centroids are nearest its own. So each
//! point meets a few thousand candidates instead of all n, and a neighbour
//! that sits in a list not probed is missed: that is the approximation.
//!
//! The spanning tree is then the minimum spanning forest of the listed
//! edges, its pieces joined by Borůvka rounds in which every piece looks for
//! its lightest edge to another piece from the few lists of its that lie
//! nearest to lists holding other pieces. Every edge in the tree is a true
//! mutual-reachability edge, never an infinite one; the tree is not always
//! the minimum one.

use super::UnionFind;
use super::mst::{self, NeighbourLists};
use super::tree::WeightedEdge;
use pulse_kernels::distance::{self, DistanceError, Neighbours, Rows};
use std::collections::HashMap;
use std::ops::Range;

/// Lists each list is compared with, its own included.
const PROBES: usize = 12;
/// Lists searched from each piece in a joining round, and lists each of
/// those probes.
const FRONTIER: usize = 4;
const FRONTIER_PROBES: usize = 4;
/// k-means rounds over the sample, and sample points per list.
const ROUNDS: usize = 8;
const SAMPLE_PER_LIST: usize = 64;

/// The points reordered list by list, with the lists each list probes.
pub(crate) struct InvertedFile {
    dim: usize,
    /// Position in `data` → the point's index.
    order: Vec<usize>,
    data: Vec<f32>,
    /// Each non-empty list's positions.
    lists: Vec<Range<usize>>,
    /// For each list, every list by distance between centroids, nearest
    /// (itself) first.
    nearest: Vec<Vec<usize>>,
    probes: Vec<Vec<usize>>,
}

impl InvertedFile {
    /// Lists for `points`, each probing enough others to hold `k`
    /// neighbours for every point (`k < points.len()`).
    pub fn build(points: Rows<'_>, k: usize) -> Result<Self, DistanceError> {
        let n = points.len();
        let dim = points.dim();
        let wanted = ((n as f64).sqrt().round() as usize).clamp(1, n.max(1));
        let mut centroids = kmeans(points, wanted, ROUNDS)?;
        let assigned = distance::nearest_rows(points, Rows::new(&centroids, dim)?, 1)?;
        let mut list_of: Vec<usize> = (0..n).map(|i| assigned.of(i).0[0] as usize).collect();
        split_large_lists(points, n.div_ceil(wanted), &mut centroids, &mut list_of)?;
        let centroids = Rows::new(&centroids, dim)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (list_of[i], i));

        // Lists that kept no point are dropped; `renamed` maps the rest.
        let mut renamed: HashMap<usize, usize> = HashMap::new();
        let mut lists: Vec<Range<usize>> = Vec::new();
        for (at, &i) in order.iter().enumerate() {
            match lists.last_mut() {
                Some(last) if list_of[order[last.start]] == list_of[i] => last.end = at + 1,
                _ => {
                    renamed.insert(list_of[i], lists.len());
                    lists.push(at..at + 1);
                }
            }
        }
        let by_centroid = distance::nearest_rows(centroids, centroids, centroids.len())?;
        let mut nearest = vec![Vec::new(); lists.len()];
        for (old, &new) in &renamed {
            nearest[new] = by_centroid
                .of(*old)
                .0
                .iter()
                .filter_map(|j| renamed.get(&(*j as usize)).copied())
                .collect();
        }
        let probes = nearest
            .iter()
            .map(|order_of_lists| {
                let mut taken = Vec::new();
                let mut points = 0;
                for &list in order_of_lists {
                    // `points − 1`: a point is not its own neighbour.
                    if taken.len() >= PROBES && points > k {
                        break;
                    }
                    taken.push(list);
                    points += lists[list].len();
                }
                taken
            })
            .collect();
        let mut data = Vec::with_capacity(n * dim);
        for &i in &order {
            data.extend_from_slice(points.row(i));
        }
        Ok(Self {
            dim,
            order,
            data,
            lists,
            nearest,
            probes,
        })
    }

    fn rows(&self) -> Result<Rows<'_>, DistanceError> {
        Rows::new(&self.data, self.dim)
    }

    /// The approximate `k` nearest neighbours of every point, by the points'
    /// own indices.
    pub fn knn(&self, k: usize) -> Result<Neighbours, DistanceError> {
        let found = distance::knn_within_groups(self.rows()?, &self.lists, &self.probes, k)?;
        let n = self.order.len();
        let mut indices = vec![0u32; n * k];
        let mut distances = vec![0f32; n * k];
        for (position, &point) in self.order.iter().enumerate() {
            let (found_indices, found_distances) = found.of(position);
            for (slot, (&j, &d)) in found_indices.iter().zip(found_distances).enumerate() {
                indices[point * k + slot] = self.order[j as usize] as u32;
                distances[point * k + slot] = d;
            }
        }
        Neighbours::from_parts(k, indices, distances)
    }

    /// The spanning tree of the mutual-reachability graph over the listed
    /// edges and the file's joining rounds (see the module's comment).
    pub fn spanning_tree(
        &self,
        points: Rows<'_>,
        lists: &NeighbourLists,
        core: &[f64],
    ) -> Result<Vec<WeightedEdge>, DistanceError> {
        let n = points.len();
        let mut sets = UnionFind::new(n);
        let mut tree = Vec::with_capacity(n.saturating_sub(1));
        mst::join_by_listed_edges(n, lists, core, &mut sets, &mut tree, false);
        let rows = self.rows()?;
        let core_by_position: Vec<f32> = self.order.iter().map(|&i| core[i] as f32).collect();
        while tree.len() + 1 < n {
            let labels: Vec<u32> = self.order.iter().map(|&i| sets.find(i) as u32).collect();
            let candidates = self.frontier(&labels);
            let found = distance::lightest_edges_to_other_labels(
                rows,
                &core_by_position,
                &labels,
                &self.lists,
                &candidates,
            )?;
            let mut edges: Vec<WeightedEdge> = found
                .into_iter()
                .flatten()
                .map(|e| WeightedEdge {
                    weight: f64::from(e.weight),
                    a: self.order[e.a as usize],
                    b: self.order[e.b as usize],
                })
                .collect();
            edges.sort_by(|x, y| {
                x.weight
                    .total_cmp(&y.weight)
                    .then((x.a.min(x.b), x.a.max(x.b)).cmp(&(y.a.min(y.b), y.a.max(y.b))))
            });
            let before = tree.len();
            for edge in edges {
                if sets.union(edge.a, edge.b).is_some() {
                    tree.push(edge);
                }
            }
            if tree.len() == before {
                // Cannot happen while two pieces exist (each piece probes a
                // list holding another); kept as a guard against looping.
                mst::join_remaining_components(
                    points,
                    core,
                    mst::most_for_matrix(n, lists.k),
                    &mut sets,
                    &mut tree,
                )?;
            }
        }
        mst::exact_weights(points, core, &mut tree);
        Ok(tree)
    }

    /// For each list, the lists to compare it with in a joining round: every
    /// piece searches from its `FRONTIER` lists nearest to a list holding
    /// another piece, each probing the `FRONTIER_PROBES` nearest such lists.
    fn frontier(&self, labels: &[u32]) -> Vec<Vec<usize>> {
        let uniform = distance::uniform_labels(labels, &self.lists);
        // Lists holding another piece than `piece`.
        let foreign = |list: usize, piece: u32| uniform[list] != Some(piece);
        // piece → (rank of its nearest foreign list, list) for each of its lists.
        let mut starts: HashMap<u32, Vec<(usize, usize)>> = HashMap::new();
        for (list, range) in self.lists.iter().enumerate() {
            let mut pieces: Vec<u32> = labels[range.clone()].to_vec();
            pieces.sort_unstable();
            pieces.dedup();
            for piece in pieces {
                if let Some(rank) = self.nearest[list]
                    .iter()
                    .position(|&other| foreign(other, piece))
                {
                    starts.entry(piece).or_default().push((rank, list));
                }
            }
        }
        let mut candidates: Vec<Vec<usize>> = vec![Vec::new(); self.lists.len()];
        for (piece, mut from) in starts {
            from.sort_unstable();
            for &(_, list) in from.iter().take(FRONTIER) {
                candidates[list].extend(
                    self.nearest[list]
                        .iter()
                        .copied()
                        .filter(|&other| foreign(other, piece))
                        .take(FRONTIER_PROBES),
                );
            }
        }
        candidates
    }
}

/// Splits every list of more than twice `target` points: points far from
/// every cluster (noise, in high dimensions) all sit nearest to the centroid
/// closest to the middle, and one list holding them would be compared with
/// its neighbours at quadratic cost. Its points are cut by the nearest of
/// some of them (no Lloyd rounds, which would pull the new centroids back
/// to the middle); what is still too large is cut into runs.
fn split_large_lists(
    points: Rows<'_>,
    target: usize,
    centroids: &mut Vec<f32>,
    list_of: &mut [usize],
) -> Result<(), DistanceError> {
    let dim = points.dim();
    let target = target.max(1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); centroids.len() / dim];
    for (i, &list) in list_of.iter().enumerate() {
        members[list].push(i);
    }
    for (list, members) in members.into_iter().enumerate() {
        if members.len() <= 2 * target {
            continue;
        }
        let mut gathered = Vec::with_capacity(members.len() * dim);
        for &i in &members {
            gathered.extend_from_slice(points.row(i));
        }
        let gathered = Rows::new(&gathered, dim)?;
        let parts = members.len().div_ceil(target);
        let sub = kmeans(gathered, parts, 0)?;
        let assigned = distance::nearest_rows(gathered, Rows::new(&sub, dim)?, 1)?;
        let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); parts];
        for (at, &i) in members.iter().enumerate() {
            by_part[assigned.of(at).0[0] as usize].push(i);
        }
        let mut first = true;
        for points_of_part in by_part.iter().filter(|p| !p.is_empty()) {
            // The part's own mean, so that lists probe it from where its
            // points are.
            let mut mean = vec![0f64; dim];
            for &i in points_of_part {
                for (m, v) in mean.iter_mut().zip(points.row(i)) {
                    *m += f64::from(*v);
                }
            }
            let mean: Vec<f32> = mean
                .iter()
                .map(|m| (m / points_of_part.len() as f64) as f32)
                .collect();
            for chunk in points_of_part.chunks(2 * target) {
                let id = if first {
                    first = false;
                    centroids[list * dim..(list + 1) * dim].copy_from_slice(&mean);
                    list
                } else {
                    centroids.extend_from_slice(&mean);
                    centroids.len() / dim - 1
                };
                for &i in chunk {
                    list_of[i] = id;
                }
            }
        }
    }
    Ok(())
}

/// `lists` centroids by `rounds` of Lloyd's algorithm on an evenly spaced
/// sample, started from evenly spaced sample points. A list that loses all
/// its points keeps its centroid.
fn kmeans(points: Rows<'_>, lists: usize, rounds: usize) -> Result<Vec<f32>, DistanceError> {
    let (n, dim) = (points.len(), points.dim());
    let sample_size = (lists * SAMPLE_PER_LIST).min(n);
    let mut sample = Vec::with_capacity(sample_size * dim);
    for s in 0..sample_size {
        sample.extend_from_slice(points.row(s * n / sample_size));
    }
    let sample = Rows::new(&sample, dim)?;
    let mut centroids = Vec::with_capacity(lists * dim);
    for c in 0..lists {
        centroids.extend_from_slice(sample.row(c * sample_size / lists));
    }
    for _ in 0..rounds {
        let assigned = distance::nearest_rows(sample, Rows::new(&centroids, dim)?, 1)?;
        let mut sums = vec![0f64; lists * dim];
        let mut counts = vec![0usize; lists];
        for s in 0..sample_size {
            let c = assigned.of(s).0[0] as usize;
            counts[c] += 1;
            for (sum, v) in sums[c * dim..(c + 1) * dim].iter_mut().zip(sample.row(s)) {
                *sum += f64::from(*v);
            }
        }
        for c in (0..lists).filter(|&c| counts[c] > 0) {
            for (out, sum) in centroids[c * dim..(c + 1) * dim]
                .iter_mut()
                .zip(&sums[c * dim..(c + 1) * dim])
            {
                *out = (*sum / counts[c] as f64) as f32;
            }
        }
    }
    Ok(centroids)
}
