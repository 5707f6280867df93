//! Pairwise euclidean distances by blocked matrix multiplies, and the
//! reductions clustering needs over them: k nearest neighbours, and the
//! lightest mutual-reachability edge between groups of points.
//!
//! Distances come from `|a|² + |b|² − 2·a·b` with the dot products of a block
//! of rows against a block of columns computed by one GEMM call, so the work
//! runs near the machine's peak instead of in scalar loops. The full n × n
//! matrix never exists: each worker owns one tile at a time. Rayon spreads
//! row blocks over the cores.

#[cfg(feature = "cuda")]
mod cuda;

use candle_core::Device;
use parking_lot::Mutex;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

const ROW_BLOCK: usize = 512;
const COL_BLOCK: usize = 512;
/// Distances screened at once against the k-th distances of their lists.
const SCREEN_LANES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistanceError {
    #[error("dimension must be at least 1")]
    ZeroDimension,
    #[error("{len} values do not make whole rows of dimension {dim}")]
    RaggedRows { len: usize, dim: usize },
    #[error("row {row} holds a value that is not finite")]
    NotFinite { row: usize },
    #[error("{what} has {got} entries, expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("groups must be contiguous ranges covering 0..{n} in order")]
    Groups { n: usize },
    #[error("rows of dimension {right} cannot be compared with rows of dimension {left}")]
    Dimensions { left: usize, right: usize },
    #[error("group {group} names candidate group {named}, but there are {groups} groups")]
    UnknownCandidate {
        group: usize,
        named: usize,
        groups: usize,
    },
    #[error(
        "the candidate groups of group {group} hold {available} other points, fewer than k = {k}"
    )]
    TooFewCandidates {
        group: usize,
        available: usize,
        k: usize,
    },
    #[error("no distance kernel runs on {0}")]
    UnsupportedDevice(String),
    #[error("the GPU failed: {0}")]
    Device(String),
}

/// Row-major points: `len()` rows of `dim()` values each, all finite.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f32],
    dim: usize,
}

impl<'a> Rows<'a> {
    pub fn new(data: &'a [f32], dim: usize) -> Result<Self, DistanceError> {
        if dim == 0 {
            return Err(DistanceError::ZeroDimension);
        }
        if !data.len().is_multiple_of(dim) {
            return Err(DistanceError::RaggedRows {
                len: data.len(),
                dim,
            });
        }
        if let Some(at) = data.iter().position(|v| !v.is_finite()) {
            return Err(DistanceError::NotFinite { row: at / dim });
        }
        Ok(Self { data, dim })
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn block(&self, range: Range<usize>) -> &'a [f32] {
        &self.data[range.start * self.dim..range.end * self.dim]
    }

    fn squared_norms(&self) -> Vec<f32> {
        self.data
            .par_chunks(self.dim)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect()
    }
}

/// Euclidean distance computed directly in f64, for the few distances whose
/// exact value matters more than the speed of getting them.
/// The sum runs in independent lanes so that it compiles to vector
/// instructions (one running sum is a chain the compiler may not reorder).
pub fn exact_distance(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let squared = |x: &f32, y: &f32| {
        let d = f64::from(*x) - f64::from(*y);
        d * d
    };
    let mut lanes = [0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| squared(x, y))
        .sum();
    for (xs, ys) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += squared(&xs[lane], &ys[lane]);
        }
    }
    (lanes.iter().sum::<f64>() + rest).sqrt()
}

/// Squared distances of `rows` (a block of the left points) to `cols` (a
/// block of the right points, often the same set) into `tile`
/// (`rows.len() × cols.len()`, row-major).
struct TileComputer<'a> {
    left: Rows<'a>,
    right: Rows<'a>,
    left_norms: Vec<f32>,
    right_norms: Vec<f32>,
}

impl<'a> TileComputer<'a> {
    fn new(points: Rows<'a>) -> Self {
        let norms = points.squared_norms();
        Self {
            left: points,
            right: points,
            left_norms: norms.clone(),
            right_norms: norms,
        }
    }

    /// Callers check that both sides have the same dimension.
    fn between(left: Rows<'a>, right: Rows<'a>) -> Self {
        Self {
            left_norms: left.squared_norms(),
            right_norms: right.squared_norms(),
            left,
            right,
        }
    }

    fn squared_distances(&self, rows: Range<usize>, cols: Range<usize>, tile: &mut Vec<f32>) {
        squared_distances(
            self.left.block(rows.clone()),
            &self.left_norms[rows],
            self.right.block(cols.clone()),
            &self.right_norms[cols],
            self.left.dim,
            tile,
        );
    }
}

/// Squared distances of the rows of `lhs` to the rows of `rhs` (both
/// row-major with `k` values a row, their squared norms beside them) into
/// `tile`, row-major.
fn squared_distances(
    lhs: &[f32],
    lhs_norms: &[f32],
    rhs: &[f32],
    rhs_norms: &[f32],
    k: usize,
    tile: &mut Vec<f32>,
) {
    let (m, n) = (lhs_norms.len(), rhs_norms.len());
    assert!(lhs.len() == m * k && rhs.len() == n * k, "tile shapes");
    tile.clear();
    tile.resize(m * n, 0.0);
    // SAFETY: `lhs` is m×k and `rhs` n×k row-major (asserted above), both
    // borrowed for the call; `tile` was just sized to m×n. The strides below describe
    // exactly those buffers (rhs read transposed), so gemm reads and
    // writes only inside them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            tile.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            0.0,
            -2.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for (row_norm, out) in lhs_norms.iter().zip(tile.chunks_exact_mut(n)) {
        for (d, c) in out.iter_mut().zip(rhs_norms) {
            *d = (*d + row_norm + c).max(0.0);
        }
    }
}

/// The `k` nearest other points of every point, nearest first.
#[derive(Debug, Clone)]
pub struct Neighbours {
    k: usize,
    indices: Vec<u32>,
    distances: Vec<f32>,
}

impl Neighbours {
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Neighbour indices and euclidean distances of point `i`, nearest first.
    pub fn of(&self, i: usize) -> (&[u32], &[f32]) {
        let span = i * self.k..(i + 1) * self.k;
        (&self.indices[span.clone()], &self.distances[span])
    }

    /// Builds lists from per-point candidates (`indices`, `distances`, each
    /// `n × k`, every row sorted nearest first) found some other way.
    pub fn from_parts(
        k: usize,
        indices: Vec<u32>,
        distances: Vec<f32>,
    ) -> Result<Self, DistanceError> {
        if indices.len() != distances.len() {
            return Err(DistanceError::Length {
                what: "distances",
                got: distances.len(),
                expected: indices.len(),
            });
        }
        if (k == 0 && !indices.is_empty()) || (k > 0 && !indices.len().is_multiple_of(k)) {
            return Err(DistanceError::Length {
                what: "neighbour lists",
                got: indices.len(),
                expected: indices.len().div_ceil(k.max(1)) * k.max(1),
            });
        }
        Ok(Self {
            k,
            indices,
            distances,
        })
    }

    /// Mutable rows for refining the lists in place (re-sorting after
    /// recomputing distances, say).
    pub fn rows_mut(&mut self) -> impl Iterator<Item = (&mut [u32], &mut [f32])> {
        self.indices
            .chunks_exact_mut(self.k)
            .zip(self.distances.chunks_exact_mut(self.k))
    }
}

/// [`knn`] on `device`: the CPU, or a CUDA GPU (kernels/cuda/distance.cu)
/// when pulse is built with `cuda`. Both give the same lists, up to the
/// rounding of the distances and the order of equally distant neighbours.
pub fn knn_on(points: Rows<'_>, k: usize, device: &Device) -> Result<Neighbours, DistanceError> {
    match device {
        Device::Cpu => Ok(knn(points, k)),
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => cuda::knn(points, k, gpu),
        other => Err(DistanceError::UnsupportedDevice(format!(
            "{:?}",
            other.location()
        ))),
    }
}

/// Exact k nearest neighbours of every point among all the others (a point is
/// never its own neighbour; duplicates of it are). `k` is capped at `n − 1`.
///
/// Each pair is computed once: the block of rows `i` meets only the columns
/// from `i` on, and every tile updates the lists of its rows and of its
/// columns. A list is locked only when a distance beats its current k-th,
/// which is read lock-free, so after the first tiles almost nothing locks.
pub fn knn(points: Rows<'_>, k: usize) -> Neighbours {
    let n = points.len();
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return Neighbours {
            k: 0,
            indices: Vec::new(),
            distances: Vec::new(),
        };
    }
    let computer = TileComputer::new(points);
    let lists: Vec<Mutex<NearestList>> = (0..n).map(|_| Mutex::new(NearestList::new(k))).collect();
    let worst: Vec<AtomicU32> = (0..n)
        .map(|_| AtomicU32::new(f32::INFINITY.to_bits()))
        .collect();
    // Offers `candidate` to the list of `list` and returns that list's k-th
    // distance after the offer.
    let offer = |list: usize, candidate: usize, d: f32| -> f32 {
        let mut guard = lists[list].lock();
        if guard.offer(candidate as u32, d) {
            worst[list].store(guard.worst().to_bits(), Ordering::Relaxed);
        }
        guard.worst()
    };
    upper_tiles(n).into_par_iter().for_each_init(
        || (Vec::new(), Vec::with_capacity(COL_BLOCK)),
        |(tile, col_worst), (rows, cols)| {
            computer.squared_distances(rows.clone(), cols.clone(), tile);
            // A k-th distance only ever shrinks, so a snapshot taken now is
            // a safe screen for the whole tile: it lets through everything
            // the live value would, and a little more, which `offer` drops.
            col_worst.clear();
            col_worst.extend(
                cols.clone()
                    .map(|c| f32::from_bits(worst[c].load(Ordering::Relaxed))),
            );
            for (r, row) in rows.clone().enumerate() {
                // Only pairs with column > row: the rest is seen elsewhere
                // (or is the point itself).
                let first = (row + 1).max(cols.start) - cols.start;
                if first >= cols.len() {
                    continue;
                }
                let line = &tile[r * cols.len() + first..(r + 1) * cols.len()];
                let screen = &mut col_worst[first..];
                let mut row_worst = f32::from_bits(worst[row].load(Ordering::Relaxed));
                for (chunk, (ds, cw)) in line
                    .chunks(SCREEN_LANES)
                    .zip(screen.chunks_mut(SCREEN_LANES))
                    .enumerate()
                {
                    // Branch-free so that it compiles to vector compares;
                    // almost every chunk of a tile fails it.
                    let hit = ds
                        .iter()
                        .zip(cw.iter())
                        .fold(false, |hit, (&d, &w)| hit | (d <= row_worst) | (d <= w));
                    if !hit {
                        continue;
                    }
                    for (offset, (&d, w)) in ds.iter().zip(cw.iter_mut()).enumerate() {
                        let col = cols.start + first + chunk * SCREEN_LANES + offset;
                        // A tie with the k-th may still win on its index.
                        if d <= row_worst {
                            row_worst = offer(row, col, d);
                        }
                        if d <= *w {
                            *w = offer(col, row, d);
                        }
                    }
                }
            }
        },
    );
    let lists: Vec<NearestList> = lists.into_iter().map(Mutex::into_inner).collect();
    let (mut indices, mut distances) = (vec![0u32; n * k], vec![0f32; n * k]);
    write_lists(lists, k, &mut indices, &mut distances);
    Neighbours {
        k,
        indices,
        distances,
    }
}

/// The tiles on and above the diagonal of the `n × n` pairs, each pair of
/// indices once. Tiles rather than row blocks are the unit of parallel
/// work: a row block meets every column block after it, so the first row
/// blocks carry far more work than the last, and whole row blocks would leave
/// a core idle at the end.
fn upper_tiles(n: usize) -> Vec<(Range<usize>, Range<usize>)> {
    (0..n)
        .step_by(ROW_BLOCK)
        .flat_map(|start| {
            let rows = start..(start + ROW_BLOCK).min(n);
            (start..n)
                .step_by(COL_BLOCK)
                .map(move |s| (rows.clone(), s..(s + COL_BLOCK).min(n)))
        })
        .collect()
}

/// The `k` smallest squared distances offered so far, ascending.
struct NearestList {
    indices: Vec<u32>,
    squared: Vec<f32>,
}

impl NearestList {
    fn new(k: usize) -> Self {
        Self {
            indices: vec![u32::MAX; k],
            squared: vec![f32::INFINITY; k],
        }
    }

    fn worst(&self) -> f32 {
        self.squared[self.squared.len() - 1]
    }

    /// Ties go to the lower index, so a list does not depend on the order
    /// of its offers: `knn`'s tiles offer from both threads in whatever
    /// order they run, and duplicate texts tie.
    fn offer(&mut self, index: u32, d: f32) -> bool {
        let last = self.indices.len() - 1;
        if (d, index) >= (self.worst(), self.indices[last]) {
            return false;
        }
        insert_sorted(&mut self.indices, &mut self.squared, index, d);
        true
    }
}

fn insert_sorted(indices: &mut [u32], dists: &mut [f32], index: u32, d: f32) {
    let mut at = dists.len() - 1;
    while at > 0 && (dists[at - 1], indices[at - 1]) > (d, index) {
        dists[at] = dists[at - 1];
        indices[at] = indices[at - 1];
        at -= 1;
    }
    dists[at] = d;
    indices[at] = index;
}

/// An edge of the mutual-reachability graph: its weight
/// `max(core[a], core[b], dist(a, b))` and its end points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub weight: f32,
    pub a: u32,
    pub b: u32,
}

impl Edge {
    /// Orders by weight, then by end points, so that every caller breaks ties
    /// the same way (Borůvka needs that to never close a cycle).
    pub fn lighter_than(&self, other: &Edge) -> bool {
        let key = |e: &Edge| (e.weight, e.a.min(e.b), e.a.max(e.b));
        let (x, y) = (key(self), key(other));
        x.0 < y.0 || (x.0 == y.0 && (x.1, x.2) < (y.1, y.2))
    }
}

fn keep_lighter(slot: &mut Option<Edge>, candidate: Edge) {
    if slot.is_none_or(|s| candidate.lighter_than(&s)) {
        *slot = Some(candidate);
    }
}

/// The lightest mutual-reachability edge between every pair of groups.
///
/// Points must be ordered so that each group is a contiguous range; `groups`
/// lists those ranges in order. The result is the `c × c` matrix (`c` =
/// number of groups) of lightest edges, `None` on the diagonal. Pairs inside
/// one group are skipped tile by tile, so the work shrinks as groups grow.
pub fn lightest_edges_between_groups(
    points: Rows<'_>,
    core: &[f32],
    groups: &[Range<usize>],
) -> Result<Vec<Option<Edge>>, DistanceError> {
    let n = points.len();
    if core.len() != n {
        return Err(DistanceError::Length {
            what: "core distances",
            got: core.len(),
            expected: n,
        });
    }
    let group_of = group_index(groups, n)?;
    let c = groups.len();
    let core_sq: Vec<f32> = core.iter().map(|v| v * v).collect();
    let computer = TileComputer::new(points);
    // One accumulator per fold task, not per tile: a row's lightest edge
    // into a group so far prunes its later tiles (see below). The matrix is
    // filled from the row's side only and mirrored at the end.
    let mut matrix = upper_tiles(n)
        .into_par_iter()
        .filter(|(rows, cols)| {
            let g = group_of[rows.start];
            !(group_of[rows.end - 1] == g
                && group_of[cols.start] == g
                && group_of[cols.end - 1] == g)
        })
        .fold(
            || (vec![None; c * c], Vec::new()),
            |(mut best, mut tile): (Vec<Option<Edge>>, Vec<f32>), (rows, cols)| {
                computer.squared_distances(rows.clone(), cols.clone(), &mut tile);
                for (r, row) in rows.clone().enumerate() {
                    let row_group = group_of[row];
                    let line = &tile[r * cols.len()..(r + 1) * cols.len()];
                    let mut c0 = cols.start;
                    while c0 < cols.end {
                        let col_group = group_of[c0];
                        let run_end = groups[col_group].end.min(cols.end);
                        let slot = &mut best[row_group * c + col_group];
                        // An edge from `row` weighs at least its core distance.
                        if col_group != row_group && slot.is_none_or(|b| core_sq[row] <= b.weight) {
                            let run = &line[c0 - cols.start..run_end - cols.start];
                            let run_core = &core_sq[c0..run_end];
                            let lightest = lightest_reach(run, run_core);
                            let weight = lightest.max(core_sq[row]);
                            if slot.is_none_or(|b| weight <= b.weight) {
                                let at = run
                                    .iter()
                                    .zip(run_core)
                                    .position(|(d, core)| d.max(*core) == lightest)
                                    .map_or(c0, |offset| c0 + offset);
                                let edge = Edge {
                                    weight,
                                    a: row as u32,
                                    b: at as u32,
                                };
                                keep_lighter(slot, edge);
                            }
                        }
                        c0 = run_end;
                    }
                }
                (best, tile)
            },
        )
        .map(|(best, _)| best)
        .reduce_with(|mut left, right| {
            for (slot, edge) in left.iter_mut().zip(right) {
                if let Some(edge) = edge {
                    keep_lighter(slot, edge);
                }
            }
            left
        })
        .unwrap_or_else(|| vec![None; c * c]);
    for ga in 0..c {
        for gb in ga + 1..c {
            if let Some(edge) = matrix[gb * c + ga] {
                keep_lighter(&mut matrix[ga * c + gb], edge);
            }
            matrix[gb * c + ga] = matrix[ga * c + gb];
        }
    }
    for e in matrix.iter_mut().flatten() {
        e.weight = e.weight.sqrt();
    }
    Ok(matrix)
}

/// `min(max(squared[i], core_sq[i]))` over a run of columns, in independent
/// lanes so that it compiles to vector instructions (a single running
/// minimum would be a chain of dependent scalar compares).
fn lightest_reach(squared: &[f32], core_sq: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [f32::INFINITY; LANES];
    let (d_chunks, c_chunks) = (squared.chunks_exact(LANES), core_sq.chunks_exact(LANES));
    let (d_rest, c_rest) = (d_chunks.remainder(), c_chunks.remainder());
    for (ds, cs) in d_chunks.zip(c_chunks) {
        for lane in 0..LANES {
            let w = if ds[lane] > cs[lane] {
                ds[lane]
            } else {
                cs[lane]
            };
            if w < lanes[lane] {
                lanes[lane] = w;
            }
        }
    }
    let mut lightest = f32::INFINITY;
    for (d, c) in d_rest.iter().zip(c_rest).map(|(d, c)| (*d, *c)) {
        lightest = lightest.min(d.max(c));
    }
    lanes.iter().fold(lightest, |m, &w| m.min(w))
}

/// For every point, the lightest mutual-reachability edge to a point of
/// another group (`None` when there is only one group). Same layout rules as
/// [`lightest_edges_between_groups`]; used when there are too many groups for
/// a `c × c` matrix.
pub fn lightest_edges_to_other_groups(
    points: Rows<'_>,
    core: &[f32],
    groups: &[Range<usize>],
) -> Result<Vec<Option<Edge>>, DistanceError> {
    let n = points.len();
    if core.len() != n {
        return Err(DistanceError::Length {
            what: "core distances",
            got: core.len(),
            expected: n,
        });
    }
    let group_of = group_index(groups, n)?;
    let core_sq: Vec<f32> = core.iter().map(|v| v * v).collect();
    let computer = TileComputer::new(points);
    let mut best: Vec<Option<Edge>> = vec![None; n];
    best.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(block, block_best)| {
            let rows = block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(n);
            let mut tile = Vec::new();
            for col_start in (0..n).step_by(COL_BLOCK) {
                let cols = col_start..(col_start + COL_BLOCK).min(n);
                let g = group_of[rows.start];
                if group_of[rows.end - 1] == g
                    && group_of[cols.start] == g
                    && group_of[cols.end - 1] == g
                {
                    continue;
                }
                computer.squared_distances(rows.clone(), cols.clone(), &mut tile);
                for (r, row) in rows.clone().enumerate() {
                    let row_group = group_of[row];
                    let line = &tile[r * cols.len()..(r + 1) * cols.len()];
                    for (offset, &d) in line.iter().enumerate() {
                        let col = cols.start + offset;
                        if group_of[col] == row_group {
                            continue;
                        }
                        let edge = Edge {
                            weight: d.max(core_sq[col]).max(core_sq[row]),
                            a: row as u32,
                            b: col as u32,
                        };
                        keep_lighter(&mut block_best[r], edge);
                    }
                }
            }
        });
    for e in best.iter_mut().flatten() {
        e.weight = e.weight.sqrt();
    }
    Ok(best)
}

/// The `k` nearest rows of `base` to every row of `queries`, nearest first
/// (`k` capped at `base.len()`): assigning points to centroids and centroids
/// to each other.
pub fn nearest_rows(
    queries: Rows<'_>,
    base: Rows<'_>,
    k: usize,
) -> Result<Neighbours, DistanceError> {
    if queries.dim() != base.dim() {
        return Err(DistanceError::Dimensions {
            left: queries.dim(),
            right: base.dim(),
        });
    }
    let (n, m) = (queries.len(), base.len());
    let k = k.min(m);
    if k == 0 || n == 0 {
        return Ok(Neighbours {
            k,
            indices: Vec::new(),
            distances: Vec::new(),
        });
    }
    let computer = TileComputer::between(queries, base);
    let mut indices = vec![0u32; n * k];
    let mut distances = vec![0f32; n * k];
    indices
        .par_chunks_mut(ROW_BLOCK * k)
        .zip(distances.par_chunks_mut(ROW_BLOCK * k))
        .enumerate()
        .for_each(|(block, (indices, distances))| {
            let rows = block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(n);
            let mut lists: Vec<NearestList> = rows.clone().map(|_| NearestList::new(k)).collect();
            let mut tile = Vec::new();
            for col_start in (0..m).step_by(COL_BLOCK) {
                let cols = col_start..(col_start + COL_BLOCK).min(m);
                computer.squared_distances(rows.clone(), cols.clone(), &mut tile);
                for (list, line) in lists.iter_mut().zip(tile.chunks_exact(cols.len())) {
                    for (offset, &d) in line.iter().enumerate() {
                        list.offer((cols.start + offset) as u32, d);
                    }
                }
            }
            write_lists(lists, k, indices, distances);
        });
    Ok(Neighbours {
        k,
        indices,
        distances,
    })
}

fn write_lists(lists: Vec<NearestList>, k: usize, indices: &mut [u32], distances: &mut [f32]) {
    for (r, list) in lists.into_iter().enumerate() {
        indices[r * k..(r + 1) * k].copy_from_slice(&list.indices);
        for (out, d) in distances[r * k..(r + 1) * k].iter_mut().zip(&list.squared) {
            *out = d.sqrt();
        }
    }
}

/// Groups (contiguous ranges of points) and, for each, the groups its points
/// are compared with: an inverted file's lists and the lists each list
/// probes. Candidate lists are deduplicated.
struct Probes<'g> {
    groups: &'g [Range<usize>],
    candidates: Vec<Vec<usize>>,
}

impl<'g> Probes<'g> {
    fn new(
        n: usize,
        groups: &'g [Range<usize>],
        candidates: &[Vec<usize>],
    ) -> Result<Self, DistanceError> {
        group_index(groups, n)?;
        if candidates.len() != groups.len() {
            return Err(DistanceError::Length {
                what: "candidate lists",
                got: candidates.len(),
                expected: groups.len(),
            });
        }
        let mut deduplicated = Vec::with_capacity(groups.len());
        for (group, named) in candidates.iter().enumerate() {
            let mut named = named.clone();
            named.sort_unstable();
            named.dedup();
            if let Some(&bad) = named.iter().find(|&&h| h >= groups.len()) {
                return Err(DistanceError::UnknownCandidate {
                    group,
                    named: bad,
                    groups: groups.len(),
                });
            }
            deduplicated.push(named);
        }
        Ok(Self {
            groups,
            candidates: deduplicated,
        })
    }

    /// Points a point of `group` can be compared with, itself not counted.
    fn available(&self, group: usize) -> usize {
        let own = usize::from(self.candidates[group].contains(&group));
        self.candidates[group]
            .iter()
            .map(|&h| self.groups[h].len())
            .sum::<usize>()
            - own
    }

    /// Calls `visit(rows, cols, tile)` for every tile of `group`'s points
    /// against the points of the groups `named`, which are first copied side
    /// by side so that each matrix multiply is wide (lists are often
    /// narrower than a column block); `cols` are the columns' point indices.
    fn tiles(
        &self,
        points: Rows<'_>,
        norms: &[f32],
        group: usize,
        named: &[usize],
        mut visit: impl FnMut(Range<usize>, &[usize], &[f32]),
    ) {
        let dim = points.dim();
        let index: Vec<usize> = named.iter().flat_map(|&h| self.groups[h].clone()).collect();
        if index.is_empty() {
            return;
        }
        let mut data = Vec::with_capacity(index.len() * dim);
        for &j in &index {
            data.extend_from_slice(points.row(j));
        }
        let gathered_norms: Vec<f32> = index.iter().map(|&j| norms[j]).collect();
        let mut tile = Vec::new();
        for rows in self.row_blocks(group) {
            for start in (0..index.len()).step_by(COL_BLOCK) {
                let end = (start + COL_BLOCK).min(index.len());
                squared_distances(
                    points.block(rows.clone()),
                    &norms[rows.clone()],
                    &data[start * dim..end * dim],
                    &gathered_norms[start..end],
                    dim,
                    &mut tile,
                );
                visit(rows.clone(), &index[start..end], &tile);
            }
        }
    }

    fn row_blocks(&self, group: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let range = self.groups[group].clone();
        range
            .clone()
            .step_by(ROW_BLOCK)
            .map(move |s| s..(s + ROW_BLOCK).min(range.end))
    }
}

/// The `k` nearest other points of every point, looked for only among the
/// points of its group's candidate groups: an inverted-file search, so the
/// approximate k nearest neighbours. Points are ordered so that every group
/// is one contiguous range (`groups`, in order); `candidates[g]` names the
/// groups whose points may be neighbours of group `g`'s points and must hold
/// at least `k` points besides each of them. Nearest first.
pub fn knn_within_groups(
    points: Rows<'_>,
    groups: &[Range<usize>],
    candidates: &[Vec<usize>],
    k: usize,
) -> Result<Neighbours, DistanceError> {
    let n = points.len();
    let probes = Probes::new(n, groups, candidates)?;
    if let Some(group) = (0..groups.len()).find(|&g| probes.available(g) < k) {
        return Err(DistanceError::TooFewCandidates {
            group,
            available: probes.available(group),
            k,
        });
    }
    let norms = points.squared_norms();
    let per_group: Vec<(Vec<u32>, Vec<f32>)> = (0..groups.len())
        .into_par_iter()
        .map(|group| {
            let first = groups[group].start;
            let mut lists: Vec<NearestList> =
                groups[group].clone().map(|_| NearestList::new(k)).collect();
            probes.tiles(
                points,
                &norms,
                group,
                &probes.candidates[group],
                |rows, cols, tile| {
                    for (row, line) in rows.zip(tile.chunks_exact(cols.len())) {
                        let list = &mut lists[row - first];
                        for (&col, &d) in cols.iter().zip(line) {
                            if col != row {
                                list.offer(col as u32, d);
                            }
                        }
                    }
                },
            );
            let size = lists.len();
            let (mut indices, mut distances) = (vec![0u32; size * k], vec![0f32; size * k]);
            write_lists(lists, k, &mut indices, &mut distances);
            (indices, distances)
        })
        .collect();
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    for (i, d) in per_group {
        indices.extend(i);
        distances.extend(d);
    }
    Ok(Neighbours {
        k,
        indices,
        distances,
    })
}

/// For every point, the lightest mutual-reachability edge to a point with
/// another label among its group's candidate groups (`None` when there is
/// no such point there). Same layout as [`knn_within_groups`]; the labels
/// are the current components of a spanning forest. Pairs of groups whose
/// points all share one label are skipped.
pub fn lightest_edges_to_other_labels(
    points: Rows<'_>,
    core: &[f32],
    labels: &[u32],
    groups: &[Range<usize>],
    candidates: &[Vec<usize>],
) -> Result<Vec<Option<Edge>>, DistanceError> {
    let n = points.len();
    for (what, got) in [("core distances", core.len()), ("labels", labels.len())] {
        if got != n {
            return Err(DistanceError::Length {
                what,
                got,
                expected: n,
            });
        }
    }
    let probes = Probes::new(n, groups, candidates)?;
    let uniform = uniform_labels(labels, groups);
    let core_sq: Vec<f32> = core.iter().map(|v| v * v).collect();
    let norms = points.squared_norms();
    let per_group: Vec<Vec<Option<Edge>>> = (0..groups.len())
        .into_par_iter()
        .map(|group| {
            let first = groups[group].start;
            let mut best: Vec<Option<Edge>> = vec![None; groups[group].len()];
            let wanted: Vec<usize> = probes.candidates[group]
                .iter()
                .copied()
                .filter(|&h| uniform[group].is_none() || uniform[group] != uniform[h])
                .collect();
            probes.tiles(points, &norms, group, &wanted, |rows, cols, tile| {
                for (row, line) in rows.zip(tile.chunks_exact(cols.len())) {
                    let slot = &mut best[row - first];
                    for (&col, &d) in cols.iter().zip(line) {
                        if labels[col] == labels[row] {
                            continue;
                        }
                        let edge = Edge {
                            weight: d.max(core_sq[col]).max(core_sq[row]),
                            a: row as u32,
                            b: col as u32,
                        };
                        keep_lighter(slot, edge);
                    }
                }
            });
            best
        })
        .collect();
    let mut best: Vec<Option<Edge>> = per_group.into_iter().flatten().collect();
    for e in best.iter_mut().flatten() {
        e.weight = e.weight.sqrt();
    }
    Ok(best)
}

/// Each group's label when all its points share one, `None` when mixed.
pub fn uniform_labels(labels: &[u32], groups: &[Range<usize>]) -> Vec<Option<u32>> {
    groups
        .iter()
        .map(|range| {
            let first = labels[range.start];
            labels[range.clone()]
                .iter()
                .all(|&l| l == first)
                .then_some(first)
        })
        .collect()
}

fn group_index(groups: &[Range<usize>], n: usize) -> Result<Vec<usize>, DistanceError> {
    let mut group_of = Vec::with_capacity(n);
    for (g, range) in groups.iter().enumerate() {
        if range.start != group_of.len() || range.is_empty() {
            return Err(DistanceError::Groups { n });
        }
        group_of.extend(std::iter::repeat_n(g, range.len()));
    }
    if group_of.len() != n {
        return Err(DistanceError::Groups { n });
    }
    Ok(group_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg_points(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn brute_sq(points: &Rows<'_>, i: usize, j: usize) -> f64 {
        exact_distance(points.row(i), points.row(j)).powi(2)
    }

    #[test]
    fn rows_reject_bad_shapes_and_values() {
        assert_eq!(
            Rows::new(&[1.0], 0).unwrap_err(),
            DistanceError::ZeroDimension
        );
        assert!(matches!(
            Rows::new(&[1.0, 2.0, 3.0], 2),
            Err(DistanceError::RaggedRows { .. })
        ));
        assert_eq!(
            Rows::new(&[1.0, 2.0, f32::NAN, 0.0], 2).unwrap_err(),
            DistanceError::NotFinite { row: 1 }
        );
    }

    #[test]
    fn knn_matches_brute_force_across_tile_edges() {
        // More rows than one row block and more columns than one column block.
        let (n, dim, k) = (2300, 7, 5);
        let data = lcg_points(n, dim, 7);
        let points = Rows::new(&data, dim).unwrap();
        let found = knn(points, k);
        for i in [0, 1, 255, 256, 511, 512, 1000, 1024, 2047, 2048, 2299] {
            let mut all: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (brute_sq(&points, i, j), j))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (idx, dist) = found.of(i);
            for (rank, (want_sq, want_j)) in all.iter().take(k).enumerate() {
                assert!(
                    (f64::from(dist[rank]).powi(2) - want_sq).abs() < 1e-4,
                    "point {i} rank {rank}"
                );
                assert_eq!(idx[rank] as usize, *want_j, "point {i} rank {rank}");
            }
        }
    }

    #[test]
    fn knn_caps_k_and_counts_duplicates() {
        let data = [0.0, 0.0, 0.0, 0.0, 3.0, 4.0];
        let found = knn(Rows::new(&data, 2).unwrap(), 10);
        assert_eq!(found.k(), 2);
        assert_eq!(found.of(0).0, &[1, 2]);
        assert_eq!(found.of(0).1, &[0.0, 5.0]);
        assert!(knn(Rows::new(&data[..2], 2).unwrap(), 3).is_empty());
    }

    #[test]
    fn knn_breaks_ties_by_index_whatever_the_threads_do() {
        // 40 distinct points, each repeated 25 times and spread over the
        // tiles: every list is full of ties.
        let (distinct, dim) = (40, 8);
        let base = lcg_points(distinct, dim, 21);
        let data: Vec<f32> = (0..distinct * 25)
            .flat_map(|i| base[(i * 7 % distinct) * dim..][..dim].to_vec())
            .collect();
        let points = Rows::new(&data, dim).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let first = pool.install(|| knn(points, 30));
        for i in 0..first.len() {
            let (idx, dist) = first.of(i);
            for r in 1..idx.len() {
                assert!(
                    (dist[r - 1], idx[r - 1]) < (dist[r], idx[r]),
                    "point {i}: {idx:?} {dist:?}"
                );
            }
        }
        for _ in 0..5 {
            let again = pool.install(|| knn(points, 30));
            for i in 0..first.len() {
                assert_eq!(again.of(i), first.of(i), "point {i}");
            }
        }
    }

    fn brute_edge(points: &Rows<'_>, core: &[f32], a: usize, b: usize) -> f64 {
        brute_sq(points, a, b)
            .sqrt()
            .max(f64::from(core[a]))
            .max(f64::from(core[b]))
    }

    #[test]
    fn group_edges_match_brute_force() {
        let (n, dim) = (2600, 3);
        let data = lcg_points(n, dim, 11);
        let points = Rows::new(&data, dim).unwrap();
        let core: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.01).collect();
        let groups = vec![0..5, 5..1400, 1400..1401, 1401..2600];
        let matrix = lightest_edges_between_groups(points, &core, &groups).unwrap();
        let per_point = lightest_edges_to_other_groups(points, &core, &groups).unwrap();
        let c = groups.len();
        for ga in 0..c {
            assert!(matrix[ga * c + ga].is_none());
            for gb in 0..c {
                if ga == gb {
                    continue;
                }
                let mut want = f64::INFINITY;
                for a in groups[ga].clone() {
                    for b in groups[gb].clone() {
                        want = want.min(brute_edge(&points, &core, a, b));
                    }
                }
                let got = matrix[ga * c + gb].unwrap();
                assert!((f64::from(got.weight) - want).abs() < 1e-4, "{ga}-{gb}");
                let (a, b) = (got.a as usize, got.b as usize);
                assert!(groups[ga].contains(&a) || groups[ga].contains(&b));
                assert!(groups[gb].contains(&a) || groups[gb].contains(&b));
                assert!((brute_edge(&points, &core, a, b) - want).abs() < 1e-4);
            }
        }
        for i in [0, 4, 5, 900, 1400, 2599] {
            let g = groups.iter().position(|r| r.contains(&i)).unwrap();
            let want = (0..n)
                .filter(|j| !groups[g].contains(j))
                .map(|j| brute_edge(&points, &core, i, j))
                .fold(f64::INFINITY, f64::min);
            let got = per_point[i].unwrap();
            assert!((f64::from(got.weight) - want).abs() < 1e-4, "point {i}");
        }
    }

    #[test]
    // A grouping of one range that misses points is one of the cases.
    #[allow(clippy::single_range_in_vec_init)]
    fn groups_must_tile_the_points() {
        let data = [0.0; 8];
        let points = Rows::new(&data, 2).unwrap();
        let core = [0.0; 4];
        for bad in [vec![0..2], vec![0..2, 3..4], vec![0..2, 2..2, 2..4]] {
            assert!(matches!(
                lightest_edges_between_groups(points, &core, &bad),
                Err(DistanceError::Groups { n: 4 })
            ));
        }
    }

    #[test]
    fn nearest_rows_matches_brute_force() {
        let (dim, k) = (5, 3);
        let queries = lcg_points(300, dim, 11);
        let base = lcg_points(2100, dim, 12);
        let (q, b) = (
            Rows::new(&queries, dim).unwrap(),
            Rows::new(&base, dim).unwrap(),
        );
        let found = nearest_rows(q, b, k).unwrap();
        for i in [0, 17, 255, 256, 299] {
            let mut all: Vec<(f64, usize)> = (0..b.len())
                .map(|j| (exact_distance(q.row(i), b.row(j)), j))
                .collect();
            all.sort_by(|x, y| x.0.total_cmp(&y.0));
            let (idx, dist) = found.of(i);
            for rank in 0..k {
                assert_eq!(idx[rank] as usize, all[rank].1, "query {i} rank {rank}");
                assert!((f64::from(dist[rank]) - all[rank].0).abs() < 1e-4);
            }
        }
        let other = [0.0; 4];
        assert_eq!(
            nearest_rows(q, Rows::new(&other, 2).unwrap(), 1).unwrap_err(),
            DistanceError::Dimensions { left: 5, right: 2 }
        );
    }

    /// 2300 points in groups of uneven sizes (one larger than a row block).
    fn uneven_groups(n: usize) -> Vec<Range<usize>> {
        let cuts = [0, 100, 400, 401, 1500, 1800, n];
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    #[test]
    fn knn_within_groups_is_exact_when_every_group_is_a_candidate() {
        let (n, dim, k) = (2300, 6, 4);
        let data = lcg_points(n, dim, 21);
        let points = Rows::new(&data, dim).unwrap();
        let groups = uneven_groups(n);
        let everything: Vec<Vec<usize>> = vec![(0..groups.len()).rev().collect(); groups.len()];
        let within = knn_within_groups(points, &groups, &everything, k).unwrap();
        let exact = knn(points, k);
        for i in 0..n {
            assert_eq!(within.of(i).0, exact.of(i).0, "point {i}");
        }
    }

    #[test]
    fn knn_within_groups_looks_only_at_candidates() {
        let (n, dim, k) = (2300, 6, 3);
        let data = lcg_points(n, dim, 22);
        let points = Rows::new(&data, dim).unwrap();
        let groups = uneven_groups(n);
        // Each group sees itself and the next one.
        let candidates: Vec<Vec<usize>> = (0..groups.len())
            .map(|g| vec![g, (g + 1) % groups.len()])
            .collect();
        let found = knn_within_groups(points, &groups, &candidates, k).unwrap();
        for (g, range) in groups.iter().enumerate() {
            for i in [range.start, range.end - 1] {
                let mut all: Vec<(f64, usize)> = candidates[g]
                    .iter()
                    .flat_map(|&h| groups[h].clone())
                    .filter(|&j| j != i)
                    .map(|j| (brute_sq(&points, i, j), j))
                    .collect();
                all.sort_by(|x, y| x.0.total_cmp(&y.0));
                let want: Vec<u32> = all.iter().take(k).map(|x| x.1 as u32).collect();
                assert_eq!(found.of(i).0, &want[..], "point {i}");
            }
        }
        let too_few = vec![vec![2]; groups.len()];
        assert_eq!(
            knn_within_groups(points, &groups, &too_few, k).unwrap_err(),
            DistanceError::TooFewCandidates {
                group: 0,
                available: 1,
                k
            }
        );
        let unknown = vec![vec![0, 9]; groups.len()];
        assert!(matches!(
            knn_within_groups(points, &groups, &unknown, k),
            Err(DistanceError::UnknownCandidate { named: 9, .. })
        ));
    }

    #[test]
    fn lightest_edges_to_other_labels_match_brute_force() {
        let (n, dim) = (2300, 4);
        let data = lcg_points(n, dim, 23);
        let points = Rows::new(&data, dim).unwrap();
        let core: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.05).collect();
        let labels: Vec<u32> = (0..n)
            .map(|i| (i % 3 == 0) as u32 + 2 * (i >= 1500) as u32)
            .collect();
        let groups = uneven_groups(n);
        let candidates: Vec<Vec<usize>> = (0..groups.len())
            .map(|g| vec![g, (g + 2) % groups.len()])
            .collect();
        let found =
            lightest_edges_to_other_labels(points, &core, &labels, &groups, &candidates).unwrap();
        for (g, range) in groups.iter().enumerate() {
            for i in [range.start, (range.start + range.end) / 2, range.end - 1] {
                let want = candidates[g]
                    .iter()
                    .flat_map(|&h| groups[h].clone())
                    .filter(|&j| labels[j] != labels[i])
                    .map(|j| brute_edge(&points, &core, i, j))
                    .min_by(f64::total_cmp);
                match (found[i], want) {
                    (Some(edge), Some(w)) => {
                        assert!((f64::from(edge.weight) - w).abs() < 1e-4, "point {i}");
                        assert_ne!(labels[edge.b as usize], labels[i]);
                    }
                    (None, None) => {}
                    (got, want) => panic!("point {i}: {got:?} against {want:?}"),
                }
            }
        }
    }
}
