//! From a minimum spanning tree of the mutual-reachability graph to labels,
//! membership probabilities and GLOSH outlier scores, with the semantics of
//! the Python `hdbscan` package: single-linkage merges, the condensed tree
//! with `min_cluster_size`, stability, excess-of-mass or leaf selection,
//! `cluster_selection_epsilon` and `allow_single_cluster`.
//!
//! Nodes are numbered as the package numbers them: points `0..n`, the
//! condensed tree's root `n`, its other clusters `n+1..` in breadth-first
//! order, so every cluster's id is larger than its parent's.

use super::{Selection, UnionFind};

/// An edge of the spanning tree: weight and end points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WeightedEdge {
    pub weight: f64,
    pub a: usize,
    pub b: usize,
}

/// One merge of the single-linkage dendrogram (scipy's layout): node
/// `n + index` joins `left` and `right` at `distance`, holding `size` points.
#[derive(Debug, Clone, Copy)]
struct Merge {
    left: usize,
    right: usize,
    distance: f64,
    size: usize,
}

/// One row of the condensed tree: `child` (a point or a cluster) leaves
/// `parent` at `lambda` = 1 / distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CondensedRow {
    pub parent: usize,
    pub child: usize,
    pub lambda: f64,
    pub size: usize,
}

pub(crate) struct Flat {
    pub labels: Vec<i32>,
    pub probabilities: Vec<f64>,
    pub outlier_scores: Vec<f64>,
    pub n_clusters: usize,
}

pub(crate) struct SelectionParams {
    pub min_cluster_size: usize,
    pub selection: Selection,
    pub epsilon: f64,
    pub allow_single_cluster: bool,
}

/// Labels, probabilities and outlier scores of `n` points from the `n − 1`
/// edges of their spanning tree.
pub(crate) fn extract(n: usize, mut edges: Vec<WeightedEdge>, params: &SelectionParams) -> Flat {
    edges.sort_by(|x, y| x.weight.total_cmp(&y.weight));
    let merges = single_linkage(n, &edges);
    let condensed = condense(n, &merges, params.min_cluster_size);
    let flat = select(n, &condensed, params);
    let outlier_scores = outlier_scores(n, &condensed);
    Flat {
        outlier_scores,
        ..flat
    }
}

fn single_linkage(n: usize, sorted_edges: &[WeightedEdge]) -> Vec<Merge> {
    let mut sets = UnionFind::new(2 * n);
    let mut node_of_set: Vec<usize> = (0..2 * n).collect();
    let mut size = vec![1usize; 2 * n];
    let mut merges = Vec::with_capacity(n.saturating_sub(1));
    for (index, edge) in sorted_edges.iter().enumerate() {
        let (ra, rb) = (sets.find(edge.a), sets.find(edge.b));
        let (left, right) = (node_of_set[ra], node_of_set[rb]);
        let node = n + index;
        size[node] = size[left] + size[right];
        merges.push(Merge {
            left,
            right,
            distance: edge.weight,
            size: size[node],
        });
        // The spanning tree has no cycles, so every edge joins two sets.
        if let Some(root) = sets.union(ra, rb) {
            node_of_set[root] = node;
        }
    }
    merges
}

fn condense(n: usize, merges: &[Merge], min_cluster_size: usize) -> Vec<CondensedRow> {
    let mut rows = Vec::with_capacity(2 * n);
    if merges.is_empty() {
        return rows;
    }
    let root = 2 * n - 2;
    let count = |node: usize| if node < n { 1 } else { merges[node - n].size };
    let mut relabel = vec![0usize; root + 1];
    relabel[root] = n;
    let mut next_label = n + 1;
    let mut queue = std::collections::VecDeque::from([root]);
    let mut leaves = Vec::new();
    while let Some(node) = queue.pop_front() {
        let merge = merges[node - n];
        let lambda = if merge.distance > 0.0 {
            1.0 / merge.distance
        } else {
            f64::INFINITY
        };
        let parent = relabel[node];
        let (left, right) = (merge.left, merge.right);
        let (left_big, right_big) = (
            count(left) >= min_cluster_size,
            count(right) >= min_cluster_size,
        );
        let mut fall_out = |side: usize, rows: &mut Vec<CondensedRow>| {
            points_under(n, merges, side, &mut leaves);
            rows.extend(leaves.drain(..).map(|point| CondensedRow {
                parent,
                child: point,
                lambda,
                size: 1,
            }));
        };
        match (left_big, right_big) {
            (true, true) => {
                for side in [left, right] {
                    relabel[side] = next_label;
                    next_label += 1;
                    rows.push(CondensedRow {
                        parent,
                        child: relabel[side],
                        lambda,
                        size: count(side),
                    });
                    queue.push_back(side);
                }
            }
            (false, false) => {
                fall_out(left, &mut rows);
                fall_out(right, &mut rows);
            }
            (true, false) | (false, true) => {
                let (kept, dropped) = if left_big {
                    (left, right)
                } else {
                    (right, left)
                };
                relabel[kept] = parent;
                fall_out(dropped, &mut rows);
                if kept >= n {
                    queue.push_back(kept);
                } else {
                    rows.push(CondensedRow {
                        parent,
                        child: kept,
                        lambda,
                        size: 1,
                    });
                }
            }
        }
    }
    rows
}

/// Appends the points under dendrogram node `node` to `out`.
fn points_under(n: usize, merges: &[Merge], node: usize, out: &mut Vec<usize>) {
    let mut stack = vec![node];
    while let Some(node) = stack.pop() {
        if node < n {
            out.push(node);
        } else {
            let merge = merges[node - n];
            stack.push(merge.right);
            stack.push(merge.left);
        }
    }
}

/// Per cluster id (index `cluster − n`): its parent, birth lambda, child
/// clusters and the largest lambda among its direct children (points or
/// clusters).
struct ClusterTree {
    n: usize,
    parent: Vec<Option<usize>>,
    birth: Vec<f64>,
    children: Vec<Vec<usize>>,
    max_child_lambda: Vec<f64>,
}

impl ClusterTree {
    fn new(n: usize, rows: &[CondensedRow]) -> Self {
        let clusters = rows.iter().map(|r| r.parent).max().map_or(0, |m| m - n + 1);
        let mut tree = ClusterTree {
            n,
            parent: vec![None; clusters],
            birth: vec![0.0; clusters],
            children: vec![Vec::new(); clusters],
            max_child_lambda: vec![0.0; clusters],
        };
        for row in rows {
            let p = row.parent - n;
            tree.max_child_lambda[p] = tree.max_child_lambda[p].max(row.lambda);
            if row.child >= n {
                let c = row.child - n;
                tree.parent[c] = Some(row.parent);
                tree.birth[c] = row.lambda;
                tree.children[p].push(row.child);
            }
        }
        tree
    }

    fn len(&self) -> usize {
        self.parent.len()
    }

    fn descendants(&self, cluster: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack = self.children[cluster - self.n].clone();
        while let Some(c) = stack.pop() {
            out.push(c);
            stack.extend(&self.children[c - self.n]);
        }
        out
    }

    fn epsilon_of(&self, cluster: usize) -> f64 {
        1.0 / self.birth[cluster - self.n]
    }

    fn is_root(&self, cluster: usize) -> bool {
        cluster == self.n
    }

    /// The first ancestor born above `epsilon`, as the package's
    /// `traverse_upwards`.
    fn ancestor_above(&self, epsilon: f64, leaf: usize, allow_single_cluster: bool) -> usize {
        let mut node = leaf;
        loop {
            let Some(parent) = self.parent[node - self.n] else {
                return node;
            };
            if self.is_root(parent) {
                return if allow_single_cluster { parent } else { node };
            }
            if self.epsilon_of(parent) > epsilon {
                return parent;
            }
            node = parent;
        }
    }

    fn epsilon_search(
        &self,
        candidates: &[usize],
        epsilon: f64,
        allow_single_cluster: bool,
    ) -> Vec<usize> {
        let mut selected = Vec::new();
        let mut processed = vec![false; self.len()];
        for &leaf in candidates {
            if self.epsilon_of(leaf) < epsilon {
                if !processed[leaf - self.n] {
                    let chosen = self.ancestor_above(epsilon, leaf, allow_single_cluster);
                    selected.push(chosen);
                    for d in self.descendants(chosen) {
                        processed[d - self.n] = true;
                    }
                }
            } else {
                selected.push(leaf);
            }
        }
        selected.sort_unstable();
        selected.dedup();
        selected
    }
}

fn stabilities(n: usize, rows: &[CondensedRow], tree: &ClusterTree) -> Vec<f64> {
    let mut stability = vec![0.0; tree.len()];
    for row in rows {
        let p = row.parent - n;
        stability[p] += (row.lambda - tree.birth[p]) * row.size as f64;
    }
    stability
}

fn select(n: usize, rows: &[CondensedRow], params: &SelectionParams) -> Flat {
    let mut flat = Flat {
        labels: vec![-1; n],
        probabilities: vec![0.0; n],
        outlier_scores: vec![0.0; n],
        n_clusters: 0,
    };
    if rows.is_empty() {
        return flat;
    }
    let tree = ClusterTree::new(n, rows);
    let mut stability = stabilities(n, rows, &tree);
    let has_cluster_rows = tree.len() > 1;
    let root = n;
    let first = if params.allow_single_cluster { 0 } else { 1 };
    let mut is_cluster = vec![false; tree.len()];
    is_cluster[first..].fill(true);

    match params.selection {
        Selection::ExcessOfMass => {
            for c in (first..tree.len()).rev() {
                let subtree: f64 = tree.children[c].iter().map(|&k| stability[k - n]).sum();
                if subtree > stability[c] {
                    is_cluster[c] = false;
                    stability[c] = subtree;
                } else {
                    for d in tree.descendants(c + n) {
                        is_cluster[d - n] = false;
                    }
                }
            }
            if params.epsilon != 0.0 && has_cluster_rows {
                let chosen: Vec<usize> = (0..tree.len())
                    .filter(|&c| is_cluster[c])
                    .map(|c| c + n)
                    .collect();
                let kept = if chosen == [root] {
                    if params.allow_single_cluster {
                        chosen
                    } else {
                        Vec::new()
                    }
                } else {
                    tree.epsilon_search(&chosen, params.epsilon, params.allow_single_cluster)
                };
                is_cluster.fill(false);
                for c in kept {
                    is_cluster[c - n] = true;
                }
            }
        }
        Selection::Leaf => {
            let leaves: Vec<usize> = (1..tree.len())
                .filter(|&c| tree.children[c].is_empty())
                .map(|c| c + n)
                .collect();
            let kept = if params.epsilon != 0.0 {
                tree.epsilon_search(&leaves, params.epsilon, params.allow_single_cluster)
            } else {
                leaves
            };
            is_cluster.fill(false);
            for c in kept {
                is_cluster[c - n] = true;
            }
        }
    }

    let selected: Vec<usize> = (0..tree.len()).filter(|&c| is_cluster[c]).collect();
    flat.n_clusters = selected.len();
    let mut label_of = vec![-1i32; tree.len()];
    for (label, &c) in selected.iter().enumerate() {
        label_of[c] = label as i32;
    }
    // The selected cluster each cluster lies in (itself or an ancestor);
    // ids grow away from the root, so one pass in id order suffices.
    let mut owner: Vec<Option<usize>> = vec![None; tree.len()];
    for c in 0..tree.len() {
        owner[c] = if is_cluster[c] {
            Some(c)
        } else {
            tree.parent[c].and_then(|p| owner[p - n])
        };
    }
    let single_root = selected == [0] && params.allow_single_cluster;
    let root_threshold = if params.epsilon != 0.0 {
        1.0 / params.epsilon
    } else {
        tree.max_child_lambda[0]
    };
    for row in rows.iter().filter(|r| r.child < n) {
        let point = row.child;
        let Some(c) = owner[row.parent - n] else {
            continue;
        };
        if c == 0 && !(single_root && row.lambda >= root_threshold) {
            continue;
        }
        flat.labels[point] = label_of[c];
        let max_lambda = tree.max_child_lambda[c];
        flat.probabilities[point] = if max_lambda == 0.0 || !row.lambda.is_finite() {
            1.0
        } else {
            row.lambda.min(max_lambda) / max_lambda
        };
    }
    flat
}

fn outlier_scores(n: usize, rows: &[CondensedRow]) -> Vec<f64> {
    let mut scores = vec![0.0; n];
    if rows.is_empty() {
        return scores;
    }
    let tree = ClusterTree::new(n, rows);
    // Deepest lambda anywhere below each cluster: children have larger ids.
    let mut deepest = tree.max_child_lambda.clone();
    for c in (1..tree.len()).rev() {
        if let Some(p) = tree.parent[c] {
            deepest[p - n] = deepest[p - n].max(deepest[c]);
        }
    }
    for row in rows.iter().filter(|r| r.child < n) {
        let lambda_max = deepest[row.parent - n];
        scores[row.child] = if lambda_max == 0.0 || !row.lambda.is_finite() {
            0.0
        } else {
            (lambda_max - row.lambda) / lambda_max
        };
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(weight: f64, a: usize, b: usize) -> WeightedEdge {
        WeightedEdge { weight, a, b }
    }

    fn params(mcs: usize, selection: Selection) -> SelectionParams {
        SelectionParams {
            min_cluster_size: mcs,
            selection,
            epsilon: 0.0,
            allow_single_cluster: false,
        }
    }

    /// Two tight groups of three (0-2 and 3-5) joined by one long edge.
    fn two_groups() -> Vec<WeightedEdge> {
        vec![
            edge(1.0, 0, 1),
            edge(1.0, 1, 2),
            edge(0.5, 3, 4),
            edge(0.5, 4, 5),
            edge(10.0, 2, 3),
        ]
    }

    #[test]
    fn single_linkage_numbers_merges_like_scipy() {
        let mut edges = two_groups();
        edges.sort_by(|x, y| x.weight.total_cmp(&y.weight));
        let merges = single_linkage(6, &edges);
        assert_eq!(merges.len(), 5);
        assert_eq!((merges[0].left, merges[0].right, merges[0].size), (3, 4, 2));
        assert_eq!((merges[1].left, merges[1].right, merges[1].size), (6, 5, 3));
        assert_eq!(merges[4].size, 6);
        assert_eq!(merges[4].distance, 10.0);
    }

    #[test]
    fn condensed_tree_splits_only_big_enough_children() {
        let mut edges = two_groups();
        edges.sort_by(|x, y| x.weight.total_cmp(&y.weight));
        let merges = single_linkage(6, &edges);
        let rows = condense(6, &merges, 3);
        let clusters: Vec<_> = rows.iter().filter(|r| r.child >= 6).collect();
        assert_eq!(clusters.len(), 2);
        assert!(
            clusters
                .iter()
                .all(|r| r.parent == 6 && r.lambda == 0.1 && r.size == 3)
        );
        assert_eq!(rows.iter().filter(|r| r.child < 6).count(), 6);
        // With min_cluster_size 4 nothing splits: all points fall out of the root.
        let rows = condense(6, &merges, 4);
        assert!(rows.iter().all(|r| r.parent == 6 && r.child < 6));
    }

    #[test]
    fn two_groups_become_two_clusters() {
        let flat = extract(6, two_groups(), &params(3, Selection::ExcessOfMass));
        assert_eq!(flat.n_clusters, 2);
        assert_eq!(flat.labels[0], flat.labels[2]);
        assert_eq!(flat.labels[3], flat.labels[5]);
        assert_ne!(flat.labels[0], flat.labels[3]);
        assert!(flat.probabilities.iter().all(|p| *p == 1.0));
        assert!(flat.outlier_scores.iter().all(|s| *s == 0.0));
    }

    #[test]
    fn single_cluster_only_when_allowed() {
        let mut p = params(4, Selection::ExcessOfMass);
        let flat = extract(6, two_groups(), &p);
        assert_eq!(flat.n_clusters, 0);
        assert!(flat.labels.iter().all(|l| *l == -1));
        p.allow_single_cluster = true;
        let flat = extract(6, two_groups(), &p);
        assert_eq!(flat.n_clusters, 1);
        // Every point left the root at the same lambda, the largest there is.
        assert!(flat.labels.iter().all(|l| *l == 0));
    }

    #[test]
    fn epsilon_merges_clusters_born_below_it() {
        let mut p = params(3, Selection::Leaf);
        p.epsilon = 20.0;
        let flat = extract(6, two_groups(), &p);
        // Both leaves were born at distance 10 < 20, but their parent is the
        // root, which only counts when a single cluster is allowed.
        assert_eq!(flat.n_clusters, 2);
        p.allow_single_cluster = true;
        let flat = extract(6, two_groups(), &p);
        assert_eq!(flat.n_clusters, 1);
    }
}
