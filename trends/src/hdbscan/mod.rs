//! Exact HDBSCAN with the semantics of the Python `hdbscan` package, fast on
//! high-dimensional embeddings.
//!
//! Where the package (and the Rust crates) spend their time in scalar
//! pairwise-distance loops, here every bulk distance computation is a
//! blocked matrix multiply (`pulse_kernels::distance`): one pass for the k
//! nearest neighbours, at most one more to join what the neighbour lists
//! cannot certify (see [`mst`]). Memory beyond the input stays O(n·(k + d)):
//! neighbour lists plus one working copy of the points, never n × n.
//!
//! `min_samples` follows the package: a point is not its own neighbour, so
//! its core distance is the distance to its `min_samples`-th nearest other
//! point (scikit-learn and the Rust crates count the point itself; their
//! `min_samples = k + 1` is the package's `k`).

mod approximate;
mod kdtree;
mod mst;
mod tree;

use candle_core::Device;
use pulse_kernels::distance::{self, DistanceError, Rows};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Neighbour lists are at least this long: longer lists certify more
/// spanning-tree edges without the all-pairs pass.
const MIN_LIST_LENGTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Euclidean,
    /// Cosine distance, computed as euclidean distance between the
    /// L2-normalised vectors (which orders neighbours identically).
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Excess of mass: the most stable clusters of the condensed tree.
    ExcessOfMass,
    /// The leaves of the condensed tree: many small, homogeneous clusters.
    Leaf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected {expected})")]
pub struct UnknownName {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for Metric {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "euclidean" | "l2" => Ok(Metric::Euclidean),
            "cosine" => Ok(Metric::Cosine),
            _ => Err(UnknownName {
                what: "metric",
                value: s.to_string(),
                expected: "euclidean or cosine",
            }),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Euclidean => "euclidean",
            Metric::Cosine => "cosine",
        })
    }
}

impl FromStr for Selection {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "eom" | "excess_of_mass" => Ok(Selection::ExcessOfMass),
            "leaf" => Ok(Selection::Leaf),
            _ => Err(UnknownName {
                what: "cluster selection",
                value: s.to_string(),
                expected: "eom or leaf",
            }),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Selection::ExcessOfMass => "eom",
            Selection::Leaf => "leaf",
        })
    }
}

/// Parameters, named and defaulted as in the Python package.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub min_cluster_size: usize,
    /// Defaults to `min_cluster_size`.
    pub min_samples: Option<usize>,
    pub metric: Metric,
    pub selection: Selection,
    /// `cluster_selection_epsilon`: clusters born below this distance merge
    /// into their parent.
    pub epsilon: f64,
    pub allow_single_cluster: bool,
    /// Neighbours from an inverted file instead of all pairs (see
    /// [`approximate`]): for large n, at some cost in agreement with the
    /// exact result. In at most 16 dimensions the exact k-d tree path
    /// ([`kdtree`]) runs either way: it is the faster there.
    pub approximate: bool,
}

impl Params {
    pub fn new(min_cluster_size: usize) -> Self {
        Self {
            min_cluster_size,
            min_samples: None,
            metric: Metric::Euclidean,
            selection: Selection::ExcessOfMass,
            epsilon: 0.0,
            allow_single_cluster: false,
            approximate: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), HdbscanError> {
        if self.min_cluster_size < 2 {
            return Err(HdbscanError::MinClusterSize(self.min_cluster_size));
        }
        if self.min_samples == Some(0) {
            return Err(HdbscanError::MinSamples);
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(HdbscanError::Epsilon(self.epsilon));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HdbscanError {
    #[error("min_cluster_size must be at least 2, got {0}")]
    MinClusterSize(usize),
    #[error("min_samples must be at least 1")]
    MinSamples,
    #[error("cluster_selection_epsilon must be a finite number ≥ 0, got {0}")]
    Epsilon(f64),
    #[error("row {row} is all zeros and has no cosine direction")]
    ZeroVector { row: usize },
    #[error(transparent)]
    Points(#[from] DistanceError),
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// k nearest neighbours and core distances.
    pub neighbours: Duration,
    /// Minimum spanning tree of the mutual-reachability graph.
    pub spanning_tree: Duration,
    /// Single linkage, condensed tree, selection, probabilities, outliers.
    pub hierarchy: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.neighbours + self.spanning_tree + self.hierarchy
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Cluster of each point, `0..n_clusters`, or −1 for noise.
    pub labels: Vec<i32>,
    /// Strength of each point's membership in its cluster, 0 for noise.
    pub probabilities: Vec<f32>,
    /// GLOSH outlier score of each point: 0 inside a cluster's core, towards 1
    /// for outliers.
    pub outlier_scores: Vec<f32>,
    pub n_clusters: usize,
    /// Whether the neighbours and the spanning tree were approximate.
    pub approximate: bool,
    pub timings: Timings,
}

/// Clusters `data` (`n × dim` row-major) with HDBSCAN on the CPU.
pub fn hdbscan(data: &[f32], dim: usize, params: &Params) -> Result<Clustering, HdbscanError> {
    hdbscan_on(data, dim, params, &Device::Cpu)
}

/// [`hdbscan`] with the exact nearest-neighbour pass (most of its work) on
/// `device`: a CUDA GPU when pulse is built with `cuda`. The lists' distances
/// are recomputed exactly on the CPU either way, so both devices give the
/// same clusters. The approximate mode runs on the CPU.
pub fn hdbscan_on(
    data: &[f32],
    dim: usize,
    params: &Params,
    device: &Device,
) -> Result<Clustering, HdbscanError> {
    params.validate()?;
    let rows = Rows::new(data, dim)?;
    let n = rows.len();
    let normalised;
    let points = match params.metric {
        Metric::Euclidean => rows,
        Metric::Cosine => {
            normalised = normalise_rows(data, dim)?;
            Rows::new(&normalised, dim)?
        }
    };
    let mut timings = Timings::default();
    let min_samples = params
        .min_samples
        .unwrap_or(params.min_cluster_size)
        .min(n.saturating_sub(1));
    if min_samples == 0 {
        return Ok(Clustering {
            labels: vec![-1; n],
            probabilities: vec![0.0; n],
            outlier_scores: vec![0.0; n],
            n_clusters: 0,
            approximate: params.approximate,
            timings,
        });
    }

    let started = Instant::now();
    let k = min_samples.max(MIN_LIST_LENGTH).min(n - 1);
    let index = NeighbourIndex::new(points, k, params.approximate)?;
    let found = index.knn(points, k, device)?;
    let lists = mst::NeighbourLists::refined(points, &found);
    drop(found);
    let core: Vec<f64> = (0..n)
        .map(|i| lists.distances[i * lists.k + min_samples - 1])
        .collect();
    timings.neighbours = started.elapsed();

    let started = Instant::now();
    let edges = index.spanning_tree(points, &lists, &core)?;
    let approximate = index.is_approximate();
    drop(index);
    drop(lists);
    timings.spanning_tree = started.elapsed();

    let started = Instant::now();
    let flat = tree::extract(
        n,
        edges,
        &tree::SelectionParams {
            min_cluster_size: params.min_cluster_size,
            selection: params.selection,
            epsilon: params.epsilon,
            allow_single_cluster: params.allow_single_cluster,
        },
    );
    timings.hierarchy = started.elapsed();

    Ok(Clustering {
        labels: flat.labels,
        probabilities: flat.probabilities.iter().map(|&p| p as f32).collect(),
        outlier_scores: flat.outlier_scores.iter().map(|&s| s as f32).collect(),
        n_clusters: flat.n_clusters,
        approximate,
        timings,
    })
}

/// Where neighbours and the spanning tree's joining edges come from.
enum NeighbourIndex<'a> {
    /// Few dimensions (the reduced layout): exact, and faster than either
    /// other way there, so it serves both modes.
    Tree(kdtree::KdTree<'a>),
    /// `approximate` in many dimensions.
    File(approximate::InvertedFile),
    /// Exact all-pairs passes, the neighbours on the given device.
    AllPairs,
}

impl<'a> NeighbourIndex<'a> {
    fn new(points: Rows<'a>, k: usize, approximate: bool) -> Result<Self, DistanceError> {
        Ok(if points.dim() <= kdtree::MAX_DIMENSIONS {
            Self::Tree(kdtree::KdTree::build(points))
        } else if approximate && k > 0 {
            Self::File(approximate::InvertedFile::build(points, k)?)
        } else {
            Self::AllPairs
        })
    }

    fn is_approximate(&self) -> bool {
        matches!(self, Self::File(_))
    }

    /// The `k` nearest other points of every point (`k < points.len()`).
    fn knn(
        &self,
        points: Rows<'_>,
        k: usize,
        device: &Device,
    ) -> Result<distance::Neighbours, DistanceError> {
        match self {
            Self::Tree(tree) => tree.knn(k),
            Self::File(file) => file.knn(k),
            Self::AllPairs => distance::knn_on(points, k, device),
        }
    }

    fn spanning_tree(
        &self,
        points: Rows<'_>,
        lists: &mst::NeighbourLists,
        core: &[f64],
    ) -> Result<Vec<tree::WeightedEdge>, DistanceError> {
        match self {
            Self::Tree(tree) => Ok(mst::spanning_tree_in_few_dimensions(
                points, tree, lists, core,
            )),
            Self::File(file) => file.spanning_tree(points, lists, core),
            Self::AllPairs => mst::spanning_tree(points, lists, core),
        }
    }
}

/// The `k` nearest other points of every point, and whether they are
/// approximate: for the pipeline's steps that need neighbour lists of
/// their own (the reduction's graph), chosen as HDBSCAN chooses its own.
pub(crate) fn neighbour_lists(
    points: Rows<'_>,
    k: usize,
    approximate: bool,
    device: &Device,
) -> Result<(distance::Neighbours, bool), DistanceError> {
    let k = k.min(points.len().saturating_sub(1));
    let index = NeighbourIndex::new(points, k, approximate)?;
    Ok((index.knn(points, k, device)?, index.is_approximate()))
}

pub(crate) fn normalise_rows(data: &[f32], dim: usize) -> Result<Vec<f32>, HdbscanError> {
    let mut out = data.to_vec();
    for (row, values) in out.chunks_exact_mut(dim).enumerate() {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(HdbscanError::ZeroVector { row });
        }
        values.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(out)
}

/// Disjoint sets with path halving and union by size.
pub(crate) struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Merges the sets of `a` and `b`; the merged set's root, or `None` when
    /// they were already one set.
    pub fn union(&mut self, a: usize, b: usize) -> Option<usize> {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return None;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra;
        self.size[ra] += self.size[rb];
        Some(ra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let data = [0.0f32; 8];
        let bad = |p: Params| hdbscan(&data, 2, &p).unwrap_err();
        assert_eq!(bad(Params::new(1)), HdbscanError::MinClusterSize(1));
        assert_eq!(
            bad(Params {
                min_samples: Some(0),
                ..Params::new(2)
            }),
            HdbscanError::MinSamples
        );
        assert!(matches!(
            bad(Params {
                epsilon: -1.0,
                ..Params::new(2)
            }),
            HdbscanError::Epsilon(_)
        ));
        assert_eq!(
            bad(Params {
                metric: Metric::Cosine,
                ..Params::new(2)
            }),
            HdbscanError::ZeroVector { row: 0 }
        );
        assert!(matches!(
            hdbscan(&data[..3], 2, &Params::new(2)),
            Err(HdbscanError::Points(DistanceError::RaggedRows { .. }))
        ));
    }

    #[test]
    fn tiny_inputs_are_all_noise() {
        for n in [0, 1] {
            let data = vec![1.0f32; n * 3];
            let c = hdbscan(&data, 3, &Params::new(5)).unwrap();
            assert_eq!(c.labels, vec![-1; n]);
            assert_eq!(c.n_clusters, 0);
        }
    }

    #[test]
    fn names_parse_both_ways() {
        for m in [Metric::Euclidean, Metric::Cosine] {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
        }
        for s in [Selection::ExcessOfMass, Selection::Leaf] {
            assert_eq!(s.to_string().parse::<Selection>().unwrap(), s);
        }
        assert!("manhattan".parse::<Metric>().is_err());
    }
}
