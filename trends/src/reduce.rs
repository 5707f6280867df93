//! A UMAP-style reduction of embeddings to a few dimensions before HDBSCAN.
//!
//! In 384 dimensions distances concentrate: density looks flat and HDBSCAN
//! calls most short texts noise. UMAP (McInnes, Healy and Melville, 2018)
//! keeps each point's neighbourhood and drops the rest, and density in its
//! layout is what HDBSCAN can read. This follows umap-learn's `fit` step by
//! step (the fuzzy neighbour graph with its per-point bandwidths, the fuzzy
//! union, the epoch schedule, the curve `1 / (1 + a·d^2b)` fitted to
//! `min_dist`, the attractive and negative-sampling gradients, clipped at 4,
//! and the learning rate falling to 0), with these differences: the
//! neighbours are pulse's own (exact, inverted file, or GPU); the layout
//! starts from the data's principal components instead of a spectral
//! embedding (see [`principal_start`]); fewer epochs on large inputs (see
//! [`ReductionParams::epochs`]); a sample's
//! negative repulsions are taken from one position and summed; and the
//! power in the gradients is a short series (see [`power`]).
//!
//! The layout runs on one thread with a seeded generator, so the same input
//! and seed give the same coordinates bit for bit on any machine that rounds
//! the same way. umap-learn also runs its layout on one thread when it is
//! given a seed; the parallel alternative (lock-free "Hogwild" updates) is
//! not reproducible.

use candle_core::{Device, Tensor};
use pulse_kernels::distance::{Neighbours, Rows};
use rayon::prelude::*;

/// Most output dimensions: the layout is specialised per dimension count.
pub const MAX_DIMENSIONS: usize = 16;
/// Default epochs: as many as make 500,000 point-epochs, within these.
const SAMPLES_BUDGET: usize = 500_000;
const MIN_DEFAULT_EPOCHS: usize = 100;
const MAX_DEFAULT_EPOCHS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct ReductionParams {
    /// Output dimensions.
    pub dimensions: usize,
    /// Neighbourhood size, counting the point itself (umap-learn's
    /// `n_neighbors`).
    pub neighbours: usize,
    /// How tightly the layout may pack neighbours (umap-learn's `min_dist`);
    /// 0 suits clustering.
    pub min_dist: f32,
    /// Passes over the graph; `None`: 500 up to 1,000 points, then
    /// 500,000 / n, down to 100 from 5,000 points. umap-learn runs 500 up
    /// to 10,000 points and 200 above; 500, 200, 100 and 60 all scored the
    /// same within ±0.01 V-measure on the fortunes (3,044 and 15,217
    /// texts), WordNet glosses and 20,000 synthetic points
    /// (docs/benchmarks.md), and the time is proportional; on 40 points in
    /// two tight groups 100 split a group, 200 and 500 did not.
    pub epochs: Option<usize>,
    pub seed: u64,
}

impl Default for ReductionParams {
    /// BERTopic's settings: 5 dimensions, 15 neighbours, `min_dist` 0.
    fn default() -> Self {
        Self {
            dimensions: 5,
            neighbours: 15,
            min_dist: 0.0,
            epochs: None,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReductionError {
    #[error("reduction dimensions must be between 1 and {MAX_DIMENSIONS}, got {0}")]
    Dimensions(usize),
    #[error("reduction neighbours must be at least 2, got {0}")]
    Neighbours(usize),
    #[error("reduction min_dist must be between 0 and 1, got {0}")]
    MinDist(f32),
    #[error("reduction epochs must be at least 1")]
    Epochs,
    #[error("principal components: {0}")]
    Tensor(String),
}

impl ReductionParams {
    pub fn validate(&self) -> Result<(), ReductionError> {
        if !(1..=MAX_DIMENSIONS).contains(&self.dimensions) {
            return Err(ReductionError::Dimensions(self.dimensions));
        }
        if self.neighbours < 2 {
            return Err(ReductionError::Neighbours(self.neighbours));
        }
        if !(0.0..=1.0).contains(&self.min_dist) {
            return Err(ReductionError::MinDist(self.min_dist));
        }
        if self.epochs == Some(0) {
            return Err(ReductionError::Epochs);
        }
        Ok(())
    }

    fn epochs(&self, n: usize) -> usize {
        self.epochs.unwrap_or_else(|| {
            (SAMPLES_BUDGET / n.max(1)).clamp(MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS)
        })
    }
}

/// How distances between the input points are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputDistance {
    Euclidean,
    /// The points are unit vectors and the lists' euclidean distances are
    /// turned into cosine distances, `1 − cos = d²/2`.
    CosineOfUnitVectors,
}

/// Lays `points` out in `params.dimensions` dimensions, `n × dimensions`
/// row-major. `neighbours` are the points' nearest others, nearest first
/// (at least `params.neighbours − 1` of them where there are that many
/// points; more are ignored).
pub fn reduce(
    points: Rows<'_>,
    neighbours: &Neighbours,
    distance: InputDistance,
    params: &ReductionParams,
) -> Result<Vec<f32>, ReductionError> {
    params.validate()?;
    let n = points.len();
    let dims = params.dimensions;
    if n == 0 {
        return Ok(Vec::new());
    }
    let start = principal_start(points, dims, params.seed)?;
    if n < 3 || neighbours.k() == 0 {
        return Ok(start);
    }
    let epochs = params.epochs(n);
    let graph = fuzzy_graph(neighbours, params.neighbours, distance);
    let (a, b) = curve(1.0, params.min_dist);
    let mut layout = Layout::new(&graph, epochs, start, dims, a, b, params.seed);
    layout.run();
    Ok(layout.embedding)
}

/// One undirected edge of the fuzzy graph and its membership strength.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edge {
    a: u32,
    b: u32,
    weight: f32,
}

/// The fuzzy simplicial set: per point, memberships
/// `exp(−(d − ρ)/σ)` of its neighbours, ρ its nearest neighbour's distance
/// and σ chosen so they sum to log2(k); then the fuzzy union of both
/// directions, `w + w' − w·w'`.
fn fuzzy_graph(lists: &Neighbours, neighbours: usize, distance: InputDistance) -> Vec<Edge> {
    let n = lists.len();
    let k = lists.k().min(neighbours - 1);
    let target = ((k + 1) as f64).log2();
    let read = |d: f32| match distance {
        InputDistance::Euclidean => d as f64,
        InputDistance::CosineOfUnitVectors => (d as f64) * (d as f64) / 2.0,
    };
    let mean_all = {
        let total: f64 = (0..n)
            .flat_map(|i| lists.of(i).1[..k].iter().map(|&d| read(d)))
            .sum();
        total / (n * (k + 1)) as f64
    };
    let mut directed: Vec<Edge> = Vec::with_capacity(n * k);
    let mut distances = vec![0.0f64; k];
    for i in 0..n {
        let (indices, raw) = lists.of(i);
        for (d, &r) in distances.iter_mut().zip(&raw[..k]) {
            *d = read(r);
        }
        let rho = distances.iter().copied().find(|&d| d > 0.0).unwrap_or(0.0);
        let sigma = bandwidth(&distances, rho, target, mean_all);
        for (&j, &d) in indices[..k].iter().zip(&distances) {
            if j as usize == i {
                continue;
            }
            let over = d - rho;
            let weight = if over <= 0.0 || sigma == 0.0 {
                1.0
            } else {
                (-over / sigma).exp()
            };
            directed.push(Edge {
                a: (i as u32).min(j),
                b: (i as u32).max(j),
                weight: weight as f32,
            });
        }
    }
    directed.sort_unstable_by_key(|e| (e.a, e.b));
    let mut edges: Vec<Edge> = Vec::with_capacity(directed.len());
    for edge in directed {
        match edges.last_mut() {
            Some(last) if (last.a, last.b) == (edge.a, edge.b) => {
                let (w, v) = (last.weight, edge.weight);
                last.weight = w + v - w * v;
            }
            _ => edges.push(edge),
        }
    }
    edges
}

/// σ of one point: a bisection for Σ exp(−max(0, d − ρ)/σ) = target, 64
/// steps at most, floored at 10⁻³ of the mean distance as umap-learn does.
fn bandwidth(distances: &[f64], rho: f64, target: f64, mean_all: f64) -> f64 {
    const TOLERANCE: f64 = 1e-5;
    const MIN_SCALE: f64 = 1e-3;
    let (mut lo, mut hi, mut mid) = (0.0f64, f64::INFINITY, 1.0f64);
    for _ in 0..64 {
        let sum: f64 = distances
            .iter()
            .map(|&d| {
                let over = d - rho;
                if over > 0.0 { (-over / mid).exp() } else { 1.0 }
            })
            .sum();
        if (sum - target).abs() < TOLERANCE {
            break;
        }
        if sum > target {
            hi = mid;
            mid = (lo + hi) / 2.0;
        } else {
            lo = mid;
            mid = if hi.is_infinite() {
                mid * 2.0
            } else {
                (lo + hi) / 2.0
            };
        }
    }
    // The point itself is one of umap-learn's k distances (at 0).
    let mean = distances.iter().sum::<f64>() / (distances.len() + 1) as f64;
    if rho > 0.0 {
        mid.max(MIN_SCALE * mean)
    } else {
        mid.max(MIN_SCALE * mean_all)
    }
}

/// `a` and `b` of the layout's similarity curve `1 / (1 + a·d^2b)`, fitted
/// by least squares (Levenberg–Marquardt, as scipy's `curve_fit`) to 1 up to
/// `min_dist` and `exp(−(d − min_dist)/spread)` beyond, on 300 points of
/// [0, 3·spread].
fn curve(spread: f64, min_dist: f32) -> (f32, f32) {
    let min_dist = min_dist as f64;
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x < min_dist {
                1.0
            } else {
                (-(x - min_dist) / spread).exp()
            }
        })
        .collect();
    let residuals = |a: f64, b: f64| -> f64 {
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| {
                let f = 1.0 / (1.0 + a * x.powf(2.0 * b));
                (f - y) * (f - y)
            })
            .sum()
    };
    let (mut a, mut b, mut lambda) = (1.0f64, 1.0f64, 1e-3f64);
    let mut cost = residuals(a, b);
    for _ in 0..200 {
        // Normal equations JᵀJ·δ = −Jᵀr of f(x) = 1 / (1 + a·x^2b).
        let (mut jaa, mut jab, mut jbb, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x <= 0.0 {
                continue;
            }
            let u = x.powf(2.0 * b);
            let f = 1.0 / (1.0 + a * u);
            let r = f - y;
            let da = -u * f * f;
            let db = -a * u * 2.0 * x.ln() * f * f;
            jaa += da * da;
            jab += da * db;
            jbb += db * db;
            ga += da * r;
            gb += db * r;
        }
        let mut improved = false;
        for _ in 0..20 {
            let (maa, mbb) = (jaa * (1.0 + lambda), jbb * (1.0 + lambda));
            let det = maa * mbb - jab * jab;
            if det.abs() < 1e-300 {
                break;
            }
            let step_a = -(mbb * ga - jab * gb) / det;
            let step_b = -(maa * gb - jab * ga) / det;
            let (na, nb) = (a + step_a, b + step_b);
            let next = if na > 0.0 && nb > 0.0 {
                residuals(na, nb)
            } else {
                f64::INFINITY
            };
            if next < cost {
                let converged = (cost - next) < 1e-15 * cost.max(1e-300);
                (a, b, cost) = (na, nb, next);
                lambda = (lambda / 10.0).max(1e-12);
                improved = !converged;
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (a as f32, b as f32)
}

/// The start of the layout: the points projected on their first principal
/// components, each scaled to [0, 10] as umap-learn scales its start, plus
/// a little seeded noise so that duplicates can part.
///
/// umap-learn starts from a spectral embedding of the graph by default. The
/// principal components are cheaper (one `d × d` covariance by one matrix
/// multiply, a few hundred products with it) and never fail on a graph that
/// falls apart in pieces, and the layout's 200–500 epochs settle the local
/// structure HDBSCAN reads either way.
pub fn principal_start(
    points: Rows<'_>,
    dims: usize,
    seed: u64,
) -> Result<Vec<f32>, ReductionError> {
    let (n, d) = (points.len(), points.dim());
    let mut mean = vec![0.0f64; d];
    for i in 0..n {
        for (m, &v) in mean.iter_mut().zip(points.row(i)) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let centred: Vec<f32> = (0..n)
        .flat_map(|i| points.row(i).iter().zip(&mean).map(|(&v, &m)| v - m as f32))
        .collect();
    let tensor_error = |e: candle_core::Error| ReductionError::Tensor(e.to_string());
    let x = Tensor::from_vec(centred, (n, d), &Device::Cpu).map_err(tensor_error)?;
    let covariance: Vec<f32> = x
        .t()
        .and_then(|t| t.matmul(&x))
        .and_then(|c| c.flatten_all())
        .and_then(|c| c.to_vec1())
        .map_err(tensor_error)?;

    let mut rng = fastrand::Rng::with_seed(seed);
    let components = top_eigenvectors(&covariance, d, dims.min(d), &mut rng);
    let projected = x
        .matmul(
            &Tensor::from_vec(components, (dims.min(d), d), &Device::Cpu)
                .and_then(|c| c.t())
                .map_err(tensor_error)?,
        )
        .and_then(|p| p.flatten_all())
        .and_then(|p| p.to_vec1::<f32>())
        .map_err(tensor_error)?;
    let used = dims.min(d);
    let mut start = vec![0.0f32; n * dims];
    for (row, out) in projected
        .chunks_exact(used)
        .zip(start.chunks_exact_mut(dims))
    {
        out[..used].copy_from_slice(row);
    }
    let largest = start.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let expansion = if largest > 0.0 { 10.0 / largest } else { 1.0 };
    for v in &mut start {
        *v = *v * expansion + (rng.f32() - 0.5) * 2e-4;
    }
    for c in 0..dims {
        let (lo, hi) = start
            .iter()
            .skip(c)
            .step_by(dims)
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let width = hi - lo;
        for v in start.iter_mut().skip(c).step_by(dims) {
            *v = if width > 0.0 {
                10.0 * (*v - lo) / width
            } else {
                0.0
            };
        }
    }
    Ok(start)
}

/// The `count` leading eigenvectors of the symmetric `d × d` matrix, one per
/// row, by subspace iteration from a seeded start.
fn top_eigenvectors(matrix: &[f32], d: usize, count: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    const ITERATIONS: usize = 200;
    let mut basis: Vec<f64> = (0..count * d).map(|_| rng.f64() - 0.5).collect();
    orthonormalise(&mut basis, d);
    let mut next = vec![0.0f64; count * d];
    for _ in 0..ITERATIONS {
        for (vector, out) in basis.chunks_exact(d).zip(next.chunks_exact_mut(d)) {
            for (o, row) in out.iter_mut().zip(matrix.chunks_exact(d)) {
                *o = dot(row, vector);
            }
        }
        std::mem::swap(&mut basis, &mut next);
        orthonormalise(&mut basis, d);
    }
    basis.iter().map(|&v| v as f32).collect()
}

/// `Σ row·vector` in f64 over eight running sums: a single chained sum
/// cannot be vectorised (its order is fixed); the start of 15,000 points
/// went from 146 to 90 ms.
fn dot(row: &[f32], vector: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut sums = [0.0f64; LANES];
    let rows = row.chunks_exact(LANES);
    let vectors = vector.chunks_exact(LANES);
    let tail: f64 = rows
        .remainder()
        .iter()
        .zip(vectors.remainder())
        .map(|(&m, &v)| f64::from(m) * v)
        .sum();
    for (r, v) in rows.zip(vectors) {
        for lane in 0..LANES {
            sums[lane] += f64::from(r[lane]) * v[lane];
        }
    }
    sums.iter().sum::<f64>() + tail
}

/// Modified Gram–Schmidt over the rows; a row that vanishes stays zero.
fn orthonormalise(rows: &mut [f64], d: usize) {
    let count = rows.len() / d;
    for i in 0..count {
        let (done, rest) = rows.split_at_mut(i * d);
        let row = &mut rest[..d];
        for previous in done.chunks_exact(d) {
            let dot: f64 = row.iter().zip(previous).map(|(a, b)| a * b).sum();
            row.iter_mut()
                .zip(previous)
                .for_each(|(a, b)| *a -= dot * b);
        }
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 1e-300 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// The stochastic layout: each directed edge pulls its ends together as
/// often as its weight says, and pushes its head away from a few random
/// points each time.
struct Layout {
    heads: Vec<u32>,
    tails: Vec<u32>,
    epochs_per_sample: Vec<f64>,
    epochs: usize,
    embedding: Vec<f32>,
    dims: usize,
    a: f32,
    b: f32,
    rng: fastrand::Rng,
}

const NEGATIVE_SAMPLE_RATE: f64 = 5.0;
const GRADIENT_CLIP: f32 = 4.0;

impl Layout {
    fn new(
        graph: &[Edge],
        epochs: usize,
        embedding: Vec<f32>,
        dims: usize,
        a: f32,
        b: f32,
        seed: u64,
    ) -> Self {
        let heaviest = graph.iter().fold(0.0f32, |m, e| m.max(e.weight));
        // umap-learn drops edges too light to be sampled once in the run.
        let kept: Vec<&Edge> = graph
            .iter()
            .filter(|e| e.weight >= heaviest / epochs as f32)
            .collect();
        // Both directions, ordered by head as umap-learn's sparse rows are.
        let mut directed: Vec<(u32, u32, f32)> = kept
            .iter()
            .flat_map(|e| [(e.a, e.b, e.weight), (e.b, e.a, e.weight)])
            .collect();
        directed.sort_unstable_by_key(|&(h, t, _)| (h, t));
        Self {
            heads: directed.iter().map(|e| e.0).collect(),
            tails: directed.iter().map(|e| e.1).collect(),
            epochs_per_sample: directed
                .iter()
                .map(|e| heaviest as f64 / e.2 as f64)
                .collect(),
            epochs,
            embedding,
            dims,
            a,
            b,
            // Apart from the start's stream: the same seed, another purpose.
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }

    fn run(&mut self) {
        macro_rules! specialised {
            ($($d:literal)*) => {
                match self.dims {
                    $($d => self.run_in::<$d>(),)*
                    _ => unreachable!("dimensions are validated"),
                }
            };
        }
        specialised!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    }

    fn run_in<const D: usize>(&mut self) {
        let n = self.embedding.len() / D;
        let edges = self.heads.len();
        let per_negative: Vec<f64> = self
            .epochs_per_sample
            .iter()
            .map(|e| e / NEGATIVE_SAMPLE_RATE)
            .collect();
        let mut next_sample = self.epochs_per_sample.clone();
        let mut next_negative = per_negative.clone();
        // One part per thread: a range of points and the edges they head
        // (the edges are ordered by head), cut so the parts sample about
        // as often each (an edge is sampled once every `epochs_per_sample`
        // epochs).
        let parts = rayon::current_num_threads().clamp(1, n.max(1));
        let mut work = Vec::with_capacity(edges + 1);
        work.push(0.0f64);
        for e in &self.epochs_per_sample {
            work.push(work.last().copied().unwrap_or(0.0) + 1.0 / e);
        }
        let total = work.last().copied().unwrap_or(0.0);
        let mut vertex_bounds = vec![0usize];
        for part in 1..parts {
            let target = total * part as f64 / parts as f64;
            let edge = work
                .partition_point(|&w| w < target)
                .min(edges.saturating_sub(1));
            let vertex = self.heads.get(edge).map_or(n, |&h| h as usize);
            vertex_bounds.push(vertex.max(*vertex_bounds.last().unwrap_or(&0)));
        }
        vertex_bounds.push(n);
        let edge_bounds: Vec<usize> = vertex_bounds
            .iter()
            .map(|&v| self.heads.partition_point(|&h| (h as usize) < v))
            .collect();
        let mut rngs: Vec<fastrand::Rng> = (0..parts).map(|_| self.rng.fork()).collect();
        let mut snapshot = if parts > 1 {
            self.embedding.clone()
        } else {
            Vec::new()
        };
        let shared = Shared {
            heads: &self.heads,
            tails: &self.tails,
            epochs_per_sample: &self.epochs_per_sample,
            per_negative: &per_negative,
            n: n as u32,
            a: self.a,
            b: self.b,
        };
        for epoch in 0..self.epochs {
            let alpha = 1.0 - epoch as f32 / self.epochs as f32;
            if parts > 1 {
                snapshot.copy_from_slice(&self.embedding);
            }
            let mut pieces = Vec::with_capacity(parts);
            let (mut points, mut samples, mut negatives) = (
                self.embedding.as_mut_slice(),
                next_sample.as_mut_slice(),
                next_negative.as_mut_slice(),
            );
            for ((vertices, edge_range), rng) in vertex_bounds
                .windows(2)
                .zip(edge_bounds.windows(2))
                .zip(rngs.iter_mut())
            {
                let (mine, rest) =
                    std::mem::take(&mut points).split_at_mut((vertices[1] - vertices[0]) * D);
                let count = edge_range[1] - edge_range[0];
                let (my_samples, rest_samples) = std::mem::take(&mut samples).split_at_mut(count);
                let (my_negatives, rest_negatives) =
                    std::mem::take(&mut negatives).split_at_mut(count);
                (points, samples, negatives) = (rest, rest_samples, rest_negatives);
                pieces.push(Part {
                    first_vertex: vertices[0],
                    points: mine,
                    first_edge: edge_range[0],
                    next_sample: my_samples,
                    next_negative: my_negatives,
                    rng,
                });
            }
            let snapshot = snapshot.as_slice();
            let shared = &shared;
            if pieces.len() == 1 {
                pieces
                    .iter_mut()
                    .for_each(|part| part.epoch::<D>(shared, snapshot, epoch as f64, alpha));
            } else {
                pieces
                    .par_iter_mut()
                    .for_each(|part| part.epoch::<D>(shared, snapshot, epoch as f64, alpha));
            }
        }
    }
}

/// What every part of the layout reads.
struct Shared<'a> {
    heads: &'a [u32],
    tails: &'a [u32],
    epochs_per_sample: &'a [f64],
    per_negative: &'a [f64],
    n: u32,
    a: f32,
    b: f32,
}

/// One thread's share of an epoch: the points it moves, the edges they
/// head and its own generator. Points of other parts are read from the
/// epoch's snapshot, so no part waits on or races another, and the same
/// thread count gives the same layout; with one part it is the sequential
/// layout.
struct Part<'a> {
    first_vertex: usize,
    points: &'a mut [f32],
    first_edge: usize,
    next_sample: &'a mut [f64],
    next_negative: &'a mut [f64],
    rng: &'a mut fastrand::Rng,
}

impl Part<'_> {
    fn epoch<const D: usize>(
        &mut self,
        shared: &Shared<'_>,
        snapshot: &[f32],
        now: f64,
        alpha: f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was found to support AVX2.
            return unsafe { self.epoch_avx2::<D>(shared, snapshot, now, alpha) };
        }
        self.epoch_in::<D>(shared, snapshot, now, alpha)
    }

    /// [`Part::epoch_in`] compiled for AVX2: the eight negative samples'
    /// lanes fill one register. The same operations in the same order, so
    /// the same layout as without it.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn epoch_avx2<const D: usize>(
        &mut self,
        shared: &Shared<'_>,
        snapshot: &[f32],
        now: f64,
        alpha: f32,
    ) {
        self.epoch_in::<D>(shared, snapshot, now, alpha)
    }

    #[inline(always)]
    fn epoch_in<const D: usize>(
        &mut self,
        shared: &Shared<'_>,
        snapshot: &[f32],
        now: f64,
        alpha: f32,
    ) {
        let (a, b) = (shared.a, shared.b);
        // The parts' generators sit side by side in one vector: drawn from
        // in place, every draw wrote a cache line the other thread's
        // generator shares, and two threads ran the layout 1.2× as fast as
        // one. A copy on this thread's stack, written back at the end, is
        // the same sequence.
        let mut rng = self.rng.clone();
        let owned = self.points.len() / D;
        let local = |i: u32| {
            (i as usize)
                .checked_sub(self.first_vertex)
                .filter(|&l| l < owned)
        };
        let read = |points: &[f32], i: u32| -> [f32; D] {
            let (source, at) = match local(i) {
                Some(l) => (points, l * D),
                None => (snapshot, i as usize * D),
            };
            source[at..at + D].try_into().unwrap_or([0.0; D])
        };
        for slot in 0..self.next_sample.len() {
            if self.next_sample[slot] > now {
                continue;
            }
            let e = self.first_edge + slot;
            let (j, k) = (shared.heads[e], shared.tails[e]);
            let mut current = read(self.points, j);
            let mut other = read(self.points, k);
            let d2 = squared_distance(&current, &other);
            let coefficient = if d2 > 0.0 {
                let p = power(d2, b);
                -2.0 * a * b * (p / d2) / (a * p + 1.0)
            } else {
                0.0
            };
            for c in 0..D {
                let g =
                    (coefficient * (current[c] - other[c])).clamp(-GRADIENT_CLIP, GRADIENT_CLIP);
                current[c] += g * alpha;
                other[c] -= g * alpha;
            }
            // The tail moves too where this part owns it; elsewhere its own
            // copy of the edge (tail → head) pulls it.
            if let Some(l) = local(k) {
                self.points[l * D..(l + 1) * D].copy_from_slice(&other);
            }
            self.next_sample[slot] += shared.epochs_per_sample[e];

            let negatives =
                ((now - self.next_negative[slot]) / shared.per_negative[e]).max(0.0) as usize;
            // The repulsions are taken from the same position and added
            // together, rather than each from where the previous one left
            // the point as umap-learn does: independent, they run side by
            // side in vector lanes instead of waiting on each other.
            let mut push = [0.0f32; D];
            let mut left = negatives;
            while left > 0 {
                let mut others = [[0.0f32; LANES]; D];
                let mut used = [false; LANES];
                for lane in 0..left.min(LANES) {
                    let k = rng.u32(..shared.n);
                    if k != j {
                        for (c, v) in read(self.points, k).into_iter().enumerate() {
                            others[c][lane] = v;
                        }
                        used[lane] = true;
                    }
                }
                left -= left.min(LANES);
                let pushed = repulsion(&current, &others, &used, a, b);
                for c in 0..D {
                    push[c] += pushed[c];
                }
            }
            for c in 0..D {
                current[c] += push[c] * alpha;
            }
            self.next_negative[slot] += negatives as f64 * shared.per_negative[e];
            if let Some(l) = local(j) {
                self.points[l * D..(l + 1) * D].copy_from_slice(&current);
            }
        }
        *self.rng = rng;
    }
}

/// Negative samples computed side by side.
const LANES: usize = 8;

/// The summed, clipped repulsions of `current` from the `used` `others`,
/// which are stored coordinate by coordinate (`others[c][lane]`) so that
/// every step runs across the lanes in vector registers.
#[inline(always)]
fn repulsion<const D: usize>(
    current: &[f32; D],
    others: &[[f32; LANES]; D],
    used: &[bool; LANES],
    a: f32,
    b: f32,
) -> [f32; D] {
    let mut d2 = [0.0f32; LANES];
    for (&x, other) in current.iter().zip(others) {
        for (d, &o) in d2.iter_mut().zip(other) {
            *d += (x - o) * (x - o);
        }
    }
    let mut coefficients = [0.0f32; LANES];
    for ((coefficient, &d), &used) in coefficients.iter_mut().zip(&d2).zip(used) {
        let pushed = 2.0 * b / ((0.001 + d) * (a * power(d, b) + 1.0));
        *coefficient = if used && d > 0.0 { pushed } else { 0.0 };
    }
    let mut push = [0.0f32; D];
    for ((p, &x), other) in push.iter_mut().zip(current).zip(others) {
        for (&coefficient, &o) in coefficients.iter().zip(other) {
            *p += (coefficient * (x - o)).clamp(-GRADIENT_CLIP, GRADIENT_CLIP);
        }
    }
    push
}

/// `x^y` for `x > 0` to about 3·10⁻⁵ relative, as 2^(y·log2 x) with short
/// series: libm's `powf` was half of the layout's time, and the layout's
/// gradients are clipped and noisy far beyond that error.
#[inline(always)]
fn power(x: f32, y: f32) -> f32 {
    const LN2: f32 = std::f32::consts::LN_2;
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // log2 of the mantissa in [1, 2) by atanh's series in t = (m − 1)/(m + 1).
    let t = (mantissa - 1.0) / (mantissa + 1.0);
    let t2 = t * t;
    let series =
        t * (2.0 + t2 * (2.0 / 3.0 + t2 * (2.0 / 5.0 + t2 * (2.0 / 7.0 + t2 * (2.0 / 9.0)))));
    let log2 = exponent as f32 + series / LN2;
    let z = (y * log2).clamp(-126.0, 126.0);
    // Truncating a positive number floors it, without libm's `floorf`.
    let whole = ((z + 127.0) as i32 - 127) as f32;
    let f = (z - whole) * LN2;
    let fraction = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f / 5040.0))))));
    fraction * f32::from_bits(((whole as i32 + 127) as u32) << 23)
}

fn squared_distance<const D: usize>(a: &[f32; D], b: &[f32; D]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_kernels::distance::knn;

    #[test]
    fn the_curve_matches_umap_learns_fit() {
        // umap-learn's find_ab_params(1.0, 0.0) and (1.0, 0.1).
        let (a, b) = curve(1.0, 0.0);
        assert!(
            (a - 1.9328).abs() < 2e-3 && (b - 0.7905).abs() < 2e-3,
            "{a} {b}"
        );
        let (a, b) = curve(1.0, 0.1);
        assert!(
            (a - 1.5769).abs() < 2e-3 && (b - 0.8951).abs() < 2e-3,
            "{a} {b}"
        );
    }

    #[test]
    fn the_fast_power_is_close_to_powf() {
        for &y in &[0.7905f32, 0.8951, 1.0, 0.5] {
            for i in 0..2000 {
                let x = 10f32.powf(-8.0 + 12.0 * i as f32 / 2000.0);
                let (fast, exact) = (power(x, y), (x as f64).powf(y as f64));
                assert!(
                    ((fast as f64 - exact) / exact).abs() < 5e-5,
                    "{x}^{y}: {fast} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn bandwidths_make_memberships_sum_to_log2_k() {
        let distances = [0.1, 0.2, 0.4, 0.5, 0.9];
        let target = 6f64.log2();
        let sigma = bandwidth(&distances, 0.1, target, 0.5);
        let sum: f64 = distances
            .iter()
            .map(|d| (-(d - 0.1f64).max(0.0) / sigma).exp())
            .sum();
        assert!((sum - target).abs() < 1e-4, "{sum} vs {target}");
    }

    #[test]
    fn the_graph_is_the_fuzzy_union_of_both_directions() {
        // On a line 0 — 1 — 2 — 3 with neighbours = 2 (one other each).
        let points = [0.0f32, 1.0, 2.5, 4.5];
        let lists = knn(Rows::new(&points, 1).unwrap(), 1);
        let graph = fuzzy_graph(&lists, 2, InputDistance::Euclidean);
        let pairs: Vec<(u32, u32)> = graph.iter().map(|e| (e.a, e.b)).collect();
        // 0↔1 both ways, 2→1 and 3→2 one way each.
        assert_eq!(pairs, vec![(0, 1), (1, 2), (2, 3)]);
        // Each point's nearest other is at ρ, so its membership is 1.
        assert!(graph.iter().all(|e| e.weight == 1.0));
    }

    /// Three groups of points along three different axes of 24 dimensions.
    fn groups(per_group: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let d = 24;
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for g in 0..3 {
            for _ in 0..per_group {
                let mut row: Vec<f32> = (0..d).map(|_| (rng.f32() - 0.5) * 0.3).collect();
                row[g * 5] += 1.0;
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                row.iter_mut().for_each(|v| *v /= norm);
                data.extend(row);
                truth.push(g);
            }
        }
        (data, truth)
    }

    fn reduced(data: &[f32], params: &ReductionParams) -> Vec<f32> {
        let points = Rows::new(data, 24).unwrap();
        let lists = knn(points, params.neighbours - 1);
        reduce(points, &lists, InputDistance::CosineOfUnitVectors, params).unwrap()
    }

    #[test]
    fn groups_stay_apart_and_the_same_seed_gives_the_same_layout() {
        let (data, truth) = groups(60, 7);
        let params = ReductionParams {
            epochs: Some(200),
            ..Default::default()
        };
        let layout = reduced(&data, &params);
        assert_eq!(layout.len(), truth.len() * 5);
        assert!(layout.iter().all(|v| v.is_finite()));
        // Every point's nearest neighbour in the layout is of its own group.
        let lists = knn(Rows::new(&layout, 5).unwrap(), 1);
        let wrong = (0..truth.len())
            .filter(|&i| truth[lists.of(i).0[0] as usize] != truth[i])
            .count();
        assert_eq!(wrong, 0);
        assert_eq!(reduced(&data, &params), layout, "same seed, same layout");
        let other = reduced(&data, &ReductionParams { seed: 43, ..params });
        assert_ne!(other, layout, "the seed is used");
    }

    #[test]
    fn small_and_degenerate_inputs_do_not_fail() {
        let params = ReductionParams::default();
        for n in [0, 1, 2, 3] {
            let data = vec![0.5f32; n * 24];
            let layout = reduced(&data, &params);
            assert_eq!(layout.len(), n * 5);
            assert!(layout.iter().all(|v| v.is_finite()), "{n}: {layout:?}");
        }
        for bad in [
            ReductionParams {
                dimensions: 0,
                ..params.clone()
            },
            ReductionParams {
                dimensions: 17,
                ..params.clone()
            },
            ReductionParams {
                neighbours: 1,
                ..params.clone()
            },
            ReductionParams {
                min_dist: -0.1,
                ..params.clone()
            },
            ReductionParams {
                epochs: Some(0),
                ..params.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
