//! The minimum spanning tree of the mutual-reachability graph without ever
//! holding the dense graph.
//!
//! Borůvka rounds first use only the edges the neighbour lists already hold.
//! A component's lightest listed outgoing edge is certainly its lightest
//! edge of all when it is lighter than the distance to the last listed
//! neighbour of every point in the component: an edge missing from both
//! end points' lists is at least that long. When no component can be
//! certified any more, what is left is a handful of large components (the
//! clusters and their hangers-on); one blocked pass over all pairs in
//! different components gives the lightest edge between every two of them,
//! and Prim's algorithm on that small complete graph finishes the tree. The
//! result is the exact minimum spanning tree of the full graph, not of a
//! neighbour graph.

use super::UnionFind;
use super::tree::WeightedEdge;
use pulse_kernels::distance::{self, DistanceError, Edge, Rows};
use std::ops::Range;

/// Each point's nearest neighbours with exact (f64) distances, nearest first.
pub(crate) struct NeighbourLists {
    pub k: usize,
    pub indices: Vec<u32>,
    pub distances: Vec<f64>,
}

impl NeighbourLists {
    /// Recomputes the distances of GEMM-found neighbours exactly and re-sorts
    /// each list, so core distances do not carry the rounding of
    /// `|a|² + |b|² − 2·a·b`.
    pub fn refined(points: Rows<'_>, found: &distance::Neighbours) -> Self {
        let k = found.k();
        let n = found.len();
        let mut indices = Vec::with_capacity(n * k);
        let mut distances = Vec::with_capacity(n * k);
        let mut row: Vec<(f64, u32)> = Vec::with_capacity(k);
        for i in 0..n {
            row.clear();
            let (idx, _) = found.of(i);
            row.extend(idx.iter().map(|&j| {
                (
                    distance::exact_distance(points.row(i), points.row(j as usize)),
                    j,
                )
            }));
            row.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            indices.extend(row.iter().map(|r| r.1));
            distances.extend(row.iter().map(|r| r.0));
        }
        Self {
            k,
            indices,
            distances,
        }
    }

    fn of(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let span = i * self.k..(i + 1) * self.k;
        self.indices[span.clone()]
            .iter()
            .zip(&self.distances[span])
            .map(|(&j, &d)| (j as usize, d))
    }

    fn last_distance(&self, i: usize) -> f64 {
        self.distances[(i + 1) * self.k - 1]
    }
}

/// The total order Borůvka needs: by weight, then by the edge's ends.
pub(super) fn lighter(x: &WeightedEdge, y: &WeightedEdge) -> bool {
    let key = |e: &WeightedEdge| (e.weight, e.a.min(e.b), e.a.max(e.b));
    let (kx, ky) = (key(x), key(y));
    kx.0 < ky.0 || (kx.0 == ky.0 && (kx.1, kx.2) < (ky.1, ky.2))
}

/// The spanning tree's `n − 1` edges, weights in f64.
pub(crate) fn spanning_tree(
    points: Rows<'_>,
    lists: &NeighbourLists,
    core: &[f64],
) -> Result<Vec<WeightedEdge>, DistanceError> {
    spanning_tree_with(points, lists, core, most_for_matrix(points.len(), lists.k))
}

/// [`spanning_tree`] in few dimensions: the listed edges first, then the
/// k-d tree's Borůvka rounds instead of the all-pairs passes.
pub(crate) fn spanning_tree_in_few_dimensions(
    points: Rows<'_>,
    low: &super::kdtree::KdTree<'_>,
    lists: &NeighbourLists,
    core: &[f64],
) -> Vec<WeightedEdge> {
    let n = points.len();
    let mut sets = UnionFind::new(n);
    let mut tree = Vec::with_capacity(n.saturating_sub(1));
    join_by_listed_edges(n, lists, core, &mut sets, &mut tree, true);
    low.join_components(core, &mut sets, &mut tree);
    exact_weights(points, core, &mut tree);
    tree
}

/// The components × components matrix may take as much memory as the
/// neighbour lists, no more.
pub(crate) fn most_for_matrix(n: usize, k: usize) -> usize {
    ((n * k.max(1)) as f64).sqrt().max(64.0) as usize
}

fn spanning_tree_with(
    points: Rows<'_>,
    lists: &NeighbourLists,
    core: &[f64],
    most_for_matrix: usize,
) -> Result<Vec<WeightedEdge>, DistanceError> {
    let n = points.len();
    let mut sets = UnionFind::new(n);
    let mut tree = Vec::with_capacity(n.saturating_sub(1));
    join_by_listed_edges(n, lists, core, &mut sets, &mut tree, true);
    if tree.len() + 1 < n {
        join_remaining_components(points, core, most_for_matrix, &mut sets, &mut tree)?;
    }
    exact_weights(points, core, &mut tree);
    Ok(tree)
}

/// Recomputes each tree edge's weight from the points in f64.
pub(crate) fn exact_weights(points: Rows<'_>, core: &[f64], tree: &mut [WeightedEdge]) {
    for edge in tree {
        let d = distance::exact_distance(points.row(edge.a), points.row(edge.b));
        edge.weight = d.max(core[edge.a]).max(core[edge.b]);
    }
}

/// Borůvka rounds over the listed edges. With `certified`, only edges that
/// are certainly in the exact tree; without, every component's lightest
/// listed edge (the minimum spanning forest of the neighbour graph).
pub(crate) fn join_by_listed_edges(
    n: usize,
    lists: &NeighbourLists,
    core: &[f64],
    sets: &mut UnionFind,
    tree: &mut Vec<WeightedEdge>,
    certified: bool,
) {
    loop {
        let component: Vec<usize> = (0..n).map(|i| sets.find(i)).collect();
        let mut floor = vec![f64::INFINITY; n];
        for (i, &c) in component.iter().enumerate() {
            floor[c] = floor[c].min(lists.last_distance(i));
        }
        let mut best: Vec<Option<WeightedEdge>> = vec![None; n];
        for i in 0..n {
            for (j, d) in lists.of(i) {
                let (ci, cj) = (component[i], component[j]);
                if ci == cj {
                    continue;
                }
                let edge = WeightedEdge {
                    weight: d.max(core[i]).max(core[j]),
                    a: i,
                    b: j,
                };
                for c in [ci, cj] {
                    if best[c].is_none_or(|b| lighter(&edge, &b)) {
                        best[c] = Some(edge);
                    }
                }
            }
        }
        let mut added = 0;
        for c in 0..n {
            if let Some(edge) = best[c]
                && (!certified || edge.weight < floor[c])
                && sets.union(edge.a, edge.b).is_some()
            {
                tree.push(edge);
                added += 1;
            }
        }
        if added == 0 {
            return;
        }
    }
}

/// Points ordered so that every component is one contiguous range.
struct Grouping {
    order: Vec<usize>,
    ranges: Vec<Range<usize>>,
    data: Vec<f32>,
    core: Vec<f32>,
}

impl Grouping {
    fn new(points: Rows<'_>, core: &[f64], sets: &mut UnionFind) -> Self {
        let n = points.len();
        let mut order: Vec<usize> = (0..n).collect();
        let component: Vec<usize> = (0..n).map(|i| sets.find(i)).collect();
        order.sort_by_key(|&i| (component[i], i));
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for (at, &i) in order.iter().enumerate() {
            match ranges.last_mut() {
                Some(r) if component[order[r.start]] == component[i] => r.end = at + 1,
                _ => ranges.push(at..at + 1),
            }
        }
        let mut data = Vec::with_capacity(n * points.dim());
        for &i in &order {
            data.extend_from_slice(points.row(i));
        }
        let core = order.iter().map(|&i| core[i] as f32).collect();
        Self {
            order,
            ranges,
            data,
            core,
        }
    }

    fn rows(&self, dim: usize) -> Result<Rows<'_>, DistanceError> {
        Rows::new(&self.data, dim)
    }

    fn original(&self, edge: Edge) -> WeightedEdge {
        WeightedEdge {
            weight: f64::from(edge.weight),
            a: self.order[edge.a as usize],
            b: self.order[edge.b as usize],
        }
    }
}

/// Joins what the listed edges could not by exact lightest edges between
/// components: per-point Borůvka passes while there are too many components
/// for a components × components matrix, then the matrix and Prim.
pub(crate) fn join_remaining_components(
    points: Rows<'_>,
    core: &[f64],
    most_for_matrix: usize,
    sets: &mut UnionFind,
    tree: &mut Vec<WeightedEdge>,
) -> Result<(), DistanceError> {
    loop {
        let grouping = Grouping::new(points, core, sets);
        let c = grouping.ranges.len();
        if c <= 1 {
            return Ok(());
        }
        let rows = grouping.rows(points.dim())?;
        if c <= most_for_matrix {
            let matrix =
                distance::lightest_edges_between_groups(rows, &grouping.core, &grouping.ranges)?;
            for edge in prim(c, &matrix) {
                let edge = grouping.original(edge);
                if sets.union(edge.a, edge.b).is_some() {
                    tree.push(edge);
                }
            }
            return Ok(());
        }
        let per_point =
            distance::lightest_edges_to_other_groups(rows, &grouping.core, &grouping.ranges)?;
        let mut best: Vec<Option<Edge>> = vec![None; c];
        for (g, range) in grouping.ranges.iter().enumerate() {
            for edge in per_point[range.clone()].iter().flatten() {
                if best[g].is_none_or(|b| edge.lighter_than(&b)) {
                    best[g] = Some(*edge);
                }
            }
        }
        for edge in best.into_iter().flatten() {
            let edge = grouping.original(edge);
            if sets.union(edge.a, edge.b).is_some() {
                tree.push(edge);
            }
        }
    }
}

/// Prim's algorithm on the complete graph of `c` groups whose edges are the
/// lightest edges between them; returns the `c − 1` chosen point edges.
fn prim(c: usize, matrix: &[Option<Edge>]) -> Vec<Edge> {
    let mut in_tree = vec![false; c];
    let mut link: Vec<Option<Edge>> = vec![None; c];
    let mut chosen = Vec::with_capacity(c.saturating_sub(1));
    let mut current = 0;
    in_tree[0] = true;
    for _ in 1..c {
        for g in 0..c {
            if in_tree[g] {
                continue;
            }
            if let Some(edge) = matrix[current * c + g]
                && link[g].is_none_or(|l| edge.lighter_than(&l))
            {
                link[g] = Some(edge);
            }
        }
        let mut next: Option<(usize, Edge)> = None;
        for g in (0..c).filter(|&g| !in_tree[g]) {
            if let Some(edge) = link[g]
                && next.is_none_or(|(_, best)| edge.lighter_than(&best))
            {
                next = Some((g, edge));
            }
        }
        let Some((g, edge)) = next else {
            break;
        };
        in_tree[g] = true;
        chosen.push(edge);
        current = g;
    }
    chosen
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Dense Prim over all pairs: the reference spanning tree weight.
    pub(in crate::hdbscan) fn brute_force_weight(points: Rows<'_>, core: &[f64]) -> f64 {
        let n = points.len();
        let weight = |a: usize, b: usize| {
            distance::exact_distance(points.row(a), points.row(b))
                .max(core[a])
                .max(core[b])
        };
        let mut in_tree = vec![false; n];
        let mut best = vec![f64::INFINITY; n];
        let mut total = 0.0;
        let mut current = 0;
        in_tree[0] = true;
        for _ in 1..n {
            for j in 0..n {
                if !in_tree[j] {
                    best[j] = best[j].min(weight(current, j));
                }
            }
            let next = (0..n)
                .filter(|&j| !in_tree[j])
                .min_by(|&x, &y| best[x].total_cmp(&best[y]))
                .unwrap();
            total += best[next];
            in_tree[next] = true;
            current = next;
        }
        total
    }

    fn blobs(n: usize, dim: usize, centres: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let centre: Vec<Vec<f32>> = (0..centres)
            .map(|_| (0..dim).map(|_| next() * 20.0).collect())
            .collect();
        (0..n)
            .flat_map(|i| {
                let c = &centre[i % centres];
                c.iter().map(|v| v + next()).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn spanning_tree_is_minimal_whatever_the_list_length() {
        // (list length, min_samples, most components for the matrix): short
        // lists leave many components; a tiny matrix limit forces the
        // per-point passes.
        for (k, ms, most) in [(3, 2, 64), (8, 5, 64), (40, 5, 64), (3, 2, 2)] {
            let (n, dim) = (300, 4);
            let data = blobs(n, dim, 5, k as u64);
            let points = Rows::new(&data, dim).unwrap();
            let lists = NeighbourLists::refined(points, &distance::knn(points, k));
            let core: Vec<f64> = (0..n).map(|i| lists.distances[i * k + ms - 1]).collect();
            let tree = spanning_tree_with(points, &lists, &core, most).unwrap();
            assert_eq!(tree.len(), n - 1);
            let mut sets = UnionFind::new(n);
            for e in &tree {
                assert!(sets.union(e.a, e.b).is_some(), "cycle");
            }
            let total: f64 = tree.iter().map(|e| e.weight).sum();
            let want = brute_force_weight(points, &core);
            assert!(
                (total - want).abs() < 1e-6 * want,
                "k={k}: {total} vs {want}"
            );
        }
    }
}
