//! Exact HDBSCAN in few dimensions (the trend pipeline's reduced layout, 5
//! by default): a k-d tree instead of all pairs.
//!
//! The blocked matrix multiplies of [`super::mst`] pay off in hundreds of
//! dimensions; in five they spend their time on n² tiny products (at
//! 1,000,000 points, all pairs cannot finish). Here neighbour lists come
//! from k-d tree searches, and the components the listed edges cannot join
//! are joined by Borůvka rounds in which every component finds its lightest
//! mutual-reachability edge to another component by searching the tree:
//! a node is skipped when all its points are in the searching component,
//! or when no edge into it can be lighter than the best found (its box's
//! distance, the least core distance inside it and the searching point's
//! own core distance each bound the weight from below). Each round's edges
//! are the exact lightest ones, so the tree is the exact minimum spanning
//! tree, as the all-pairs path gives it.
//!
//! Written here rather than taken from a k-d tree crate (`kiddo` was read):
//! the joining search needs to skip by component and by core distance
//! inside the traversal, which no crate's query offers.

use super::UnionFind;
use super::mst::lighter;
use super::tree::WeightedEdge;
#[cfg(test)]
use pulse_kernels::distance;
use pulse_kernels::distance::{DistanceError, Neighbours, Rows};
use rayon::prelude::*;

/// Up to this many dimensions the k-d tree runs instead of all pairs
/// (the reduction's range, 1–16).
pub(crate) const MAX_DIMENSIONS: usize = 16;
/// Points per leaf.
const LEAF: usize = 16;
const NONE: u32 = u32::MAX;

struct Node {
    /// Positions `start..end` of `order`.
    start: u32,
    end: u32,
    /// Children, or `NONE` for a leaf.
    left: u32,
    right: u32,
}

pub(crate) struct KdTree<'a> {
    points: Rows<'a>,
    dim: usize,
    /// Point indices, each node's a contiguous range.
    order: Vec<u32>,
    nodes: Vec<Node>,
    /// Each node's bounding box: `dim` lows then `dim` highs.
    boxes: Vec<f64>,
}

impl<'a> KdTree<'a> {
    /// Splits on the widest side of each box, at the median.
    pub fn build(points: Rows<'a>) -> Self {
        let dim = points.dim();
        let n = points.len();
        let mut tree = Self {
            points,
            dim,
            order: (0..n as u32).collect(),
            nodes: Vec::with_capacity(2 * n.div_ceil(LEAF) + 1),
            boxes: Vec::with_capacity((2 * n.div_ceil(LEAF) + 1) * 2 * dim),
        };
        if n > 0 {
            tree.split(0, n);
        }
        tree
    }

    /// Builds the node over `order[start..end]` and its subtree; returns its
    /// index.
    fn split(&mut self, start: usize, end: usize) -> u32 {
        let id = self.nodes.len() as u32;
        let dim = self.dim;
        let mut bounds = vec![f64::INFINITY; dim];
        bounds.extend(std::iter::repeat_n(f64::NEG_INFINITY, dim));
        for &i in &self.order[start..end] {
            for (c, &v) in self.points.row(i as usize).iter().enumerate() {
                bounds[c] = bounds[c].min(f64::from(v));
                bounds[dim + c] = bounds[dim + c].max(f64::from(v));
            }
        }
        let widest = (0..dim)
            .max_by(|&a, &b| {
                (bounds[dim + a] - bounds[a]).total_cmp(&(bounds[dim + b] - bounds[b]))
            })
            .unwrap_or(0);
        let flat = bounds[dim + widest] - bounds[widest] <= 0.0;
        self.boxes.extend_from_slice(&bounds);
        self.nodes.push(Node {
            start: start as u32,
            end: end as u32,
            left: NONE,
            right: NONE,
        });
        if end - start <= LEAF || flat {
            return id;
        }
        let middle = start + (end - start) / 2;
        let points = self.points;
        self.order[start..end].select_nth_unstable_by(middle - start, |&a, &b| {
            points.row(a as usize)[widest]
                .total_cmp(&points.row(b as usize)[widest])
                .then(a.cmp(&b))
        });
        let left = self.split(start, middle);
        let right = self.split(middle, end);
        let node = &mut self.nodes[id as usize];
        node.left = left;
        node.right = right;
        id
    }

    /// Squared distance from `query` to node `node`'s box.
    fn box_distance(&self, node: u32, query: &[f32]) -> f64 {
        let b = &self.boxes[node as usize * 2 * self.dim..(node as usize + 1) * 2 * self.dim];
        let mut sum = 0.0;
        for (c, &q) in query.iter().enumerate() {
            let q = f64::from(q);
            let gap = (b[c] - q).max(q - b[self.dim + c]).max(0.0);
            sum += gap * gap;
        }
        sum
    }

    fn squared(&self, i: usize, j: usize) -> f64 {
        self.points
            .row(i)
            .iter()
            .zip(self.points.row(j))
            .map(|(&a, &b)| {
                let d = f64::from(a) - f64::from(b);
                d * d
            })
            .sum()
    }

    /// The `k` nearest other points of every point, nearest first (ties by
    /// index), `k < n`.
    pub fn knn(&self, k: usize) -> Result<Neighbours, DistanceError> {
        let n = self.points.len();
        let mut indices = vec![0u32; n * k];
        let mut distances = vec![0f32; n * k];
        if k > 0 {
            indices
                .par_chunks_mut(k)
                .zip(distances.par_chunks_mut(k))
                .enumerate()
                .for_each_init(
                    || Vec::with_capacity(k + 1),
                    |list, (i, (indices, distances))| {
                        list.clear();
                        self.nearest(0, i, k, list);
                        for ((index, distance), &(d, j)) in indices
                            .iter_mut()
                            .zip(distances.iter_mut())
                            .zip(list.iter())
                        {
                            *index = j;
                            *distance = d.sqrt() as f32;
                        }
                    },
                );
        }
        Neighbours::from_parts(k, indices, distances)
    }

    /// Offers node `node`'s points to `list` (sorted, at most `k`), nearest
    /// side first.
    fn nearest(&self, node: u32, i: usize, k: usize, list: &mut Vec<(f64, u32)>) {
        let query = self.points.row(i);
        let worst = |list: &Vec<(f64, u32)>| {
            if list.len() < k {
                f64::INFINITY
            } else {
                list[k - 1].0
            }
        };
        let current = &self.nodes[node as usize];
        if current.left == NONE {
            for &j in &self.order[current.start as usize..current.end as usize] {
                if j as usize == i {
                    continue;
                }
                let d = self.squared(i, j as usize);
                if (d, j) < (worst(list), u32::MAX) {
                    let at = list.partition_point(|&(e, m)| (e, m) < (d, j));
                    list.insert(at, (d, j));
                    list.truncate(k);
                }
            }
            return;
        }
        let (near, far) = {
            let (l, r) = (current.left, current.right);
            if self.box_distance(l, query) <= self.box_distance(r, query) {
                (l, r)
            } else {
                (r, l)
            }
        };
        for child in [near, far] {
            if self.box_distance(child, query) <= worst(list) {
                self.nearest(child, i, k, list);
            }
        }
    }

    /// Joins every component of `sets` into one tree by Borůvka rounds of
    /// exact lightest mutual-reachability edges between components.
    pub fn join_components(
        &self,
        core: &[f64],
        sets: &mut UnionFind,
        tree: &mut Vec<WeightedEdge>,
    ) {
        let n = self.points.len();
        let least_core = self.least_core(core);
        loop {
            let component: Vec<u32> = (0..n).map(|i| sets.find(i) as u32).collect();
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); n];
            for (i, &c) in component.iter().enumerate() {
                members[c as usize].push(i as u32);
            }
            let groups: Vec<Vec<u32>> = members.into_iter().filter(|m| !m.is_empty()).collect();
            if groups.len() <= 1 {
                return;
            }
            let shared = self.shared_component(&component);
            let search = Search {
                tree: self,
                core,
                least_core: &least_core,
                component: &component,
                shared: &shared,
            };
            let best: Vec<Option<WeightedEdge>> = groups
                .par_iter()
                .map(|group| {
                    let mut best = None;
                    for &p in group {
                        search.lightest_from(0, p as usize, &mut best);
                    }
                    best
                })
                .collect();
            let mut added = 0;
            for edge in best.into_iter().flatten() {
                if sets.union(edge.a, edge.b).is_some() {
                    tree.push(edge);
                    added += 1;
                }
            }
            if added == 0 {
                // Unreachable with finite points; never loop forever.
                return;
            }
        }
    }

    /// The least core distance inside each node.
    fn least_core(&self, core: &[f64]) -> Vec<f64> {
        let mut least = vec![f64::INFINITY; self.nodes.len()];
        for id in (0..self.nodes.len()).rev() {
            let node = &self.nodes[id];
            least[id] = if node.left == NONE {
                self.order[node.start as usize..node.end as usize]
                    .iter()
                    .map(|&i| core[i as usize])
                    .fold(f64::INFINITY, f64::min)
            } else {
                least[node.left as usize].min(least[node.right as usize])
            };
        }
        least
    }

    /// The component every point of a node is in, or `NONE` where they
    /// differ. Children are built after their parent, so a backwards pass
    /// sees them first.
    fn shared_component(&self, component: &[u32]) -> Vec<u32> {
        let mut shared = vec![NONE; self.nodes.len()];
        for id in (0..self.nodes.len()).rev() {
            let node = &self.nodes[id];
            shared[id] = if node.left == NONE {
                let mut points = self.order[node.start as usize..node.end as usize].iter();
                let first = points.next().map_or(NONE, |&i| component[i as usize]);
                if points.all(|&i| component[i as usize] == first) {
                    first
                } else {
                    NONE
                }
            } else {
                let (l, r) = (shared[node.left as usize], shared[node.right as usize]);
                if l == r { l } else { NONE }
            };
        }
        shared
    }
}

/// One Borůvka round's view of the tree.
struct Search<'t, 'a> {
    tree: &'t KdTree<'a>,
    core: &'t [f64],
    least_core: &'t [f64],
    component: &'t [u32],
    shared: &'t [u32],
}

impl Search<'_, '_> {
    /// Offers `best` the lightest edge from point `p` into node `node` that
    /// leaves `p`'s component, when lighter.
    fn lightest_from(&self, node: u32, p: usize, best: &mut Option<WeightedEdge>) {
        let tree = self.tree;
        let mine = self.component[p];
        if self.shared[node as usize] == mine {
            return;
        }
        let query = tree.points.row(p);
        let floor = self.core[p].max(self.least_core[node as usize]);
        let bound = best.map_or(f64::INFINITY, |b| b.weight);
        if floor > bound || tree.box_distance(node, query).sqrt() > bound {
            return;
        }
        let current = &tree.nodes[node as usize];
        if current.left == NONE {
            for &q in &tree.order[current.start as usize..current.end as usize] {
                let q = q as usize;
                if self.component[q] == mine {
                    continue;
                }
                let weight = tree
                    .squared(p, q)
                    .sqrt()
                    .max(self.core[p])
                    .max(self.core[q]);
                let edge = WeightedEdge { weight, a: p, b: q };
                if best.is_none_or(|b| lighter(&edge, &b)) {
                    *best = Some(edge);
                }
            }
            return;
        }
        let (l, r) = (current.left, current.right);
        let (near, far) = if tree.box_distance(l, query) <= tree.box_distance(r, query) {
            (l, r)
        } else {
            (r, l)
        };
        self.lightest_from(near, p, best);
        self.lightest_from(far, p, best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Clumps, repeated coordinates and exact duplicates: the cases a
        // median split must survive.
        (0..n * dim)
            .map(|i| match i % 7 {
                0 => (rng.u32(..4)) as f32,
                _ => rng.f32() * 10.0 + ((i / dim) % 3) as f32 * 20.0,
            })
            .collect()
    }

    #[test]
    fn neighbours_match_all_pairs() {
        for (n, dim) in [(1, 3), (2, 2), (17, 1), (500, 2), (800, 5), (300, 16)] {
            let data = cloud(n, dim, n as u64);
            let points = Rows::new(&data, dim).unwrap();
            let k = 10.min(n - 1);
            let found = KdTree::build(points).knn(k).unwrap();
            for i in 0..n {
                let mut all: Vec<(f64, u32)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        (
                            distance::exact_distance(points.row(i), points.row(j)),
                            j as u32,
                        )
                    })
                    .collect();
                all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let (indices, distances) = found.of(i);
                let want: Vec<u32> = all[..k].iter().map(|&(_, j)| j).collect();
                assert_eq!(indices, want.as_slice(), "n {n} dim {dim} point {i}");
                for (&d, &(w, _)) in distances.iter().zip(&all) {
                    assert!((f64::from(d) - w).abs() <= 1e-5 * w.max(1.0));
                }
            }
        }
    }

    #[test]
    fn joining_gives_the_minimum_spanning_trees_weight() {
        for (n, dim) in [(2, 2), (60, 2), (400, 3), (700, 5)] {
            let data = cloud(n, dim, 7 + n as u64);
            let points = Rows::new(&data, dim).unwrap();
            let core: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 0.1).collect();
            let tree = KdTree::build(points);
            let mut sets = UnionFind::new(n);
            let mut edges = Vec::new();
            tree.join_components(&core, &mut sets, &mut edges);
            assert_eq!(edges.len(), n - 1);
            let got: f64 = edges.iter().map(|e| e.weight).sum();
            let expected = crate::hdbscan::mst::tests::brute_force_weight(points, &core);
            assert!(
                (got - expected).abs() < 1e-6 * expected.max(1.0),
                "n {n}: {got} vs {expected}"
            );
        }
    }
}
