//! The trend pipeline `pulse cluster` and re-cluster jobs both run:
//! an optional UMAP-style reduction ([`crate::reduce`]) → HDBSCAN →
//! assignment of noise signals to a near trend → merging of near-duplicate
//! trends. With the three optional steps off it is HDBSCAN alone, label for
//! label.

use crate::hdbscan::{self, Clustering, HdbscanError, Metric, Params, Timings, UnionFind};
use crate::keywords::class_keywords;
use crate::reduce::{self, InputDistance, ReductionError, ReductionParams};
use crate::summary::{cosine, unit_mean};
use candle_core::Device;
use pulse_kernels::distance::{DistanceError, Neighbours, Rows, nearest_rows};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How a signal HDBSCAN left out is matched with a trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignBy {
    /// The trend whose centroid is most similar (cosine in the input
    /// space); the score is that cosine.
    Centroid,
    /// The trend most of its nearest neighbours (in the input space) belong
    /// to, each neighbour weighted by its cosine; the score is that trend's
    /// share of the whole weight, noise neighbours included.
    Neighbours,
}

impl FromStr for AssignBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "centroid" => Ok(AssignBy::Centroid),
            "neighbours" | "neighbors" => Ok(AssignBy::Neighbours),
            _ => Err(format!(
                "unknown assignment `{s}` (expected centroid or neighbours)"
            )),
        }
    }
}

impl fmt::Display for AssignBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssignBy::Centroid => "centroid",
            AssignBy::Neighbours => "neighbours",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignmentParams {
    pub by: AssignBy,
    /// The score a signal needs to join a trend, in `0..=1`.
    pub threshold: f32,
}

impl AssignmentParams {
    /// The threshold measured best on short texts for each method, on the
    /// fortunes and WordNet glosses (docs/benchmarks.md, "Trend quality"):
    /// the loosest that keeps the clustered signals' V-measure within
    /// 0.005 of HDBSCAN's members alone. Looser ones add signals that
    /// agree less with their trend than they add to the whole set's score.
    pub fn default_threshold(by: AssignBy) -> f32 {
        match by {
            AssignBy::Centroid => 0.6,
            AssignBy::Neighbours => 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MergeParams {
    /// Trends whose centroids have at least this cosine, and (where texts
    /// are given) share a leading keyword, merge.
    pub threshold: Option<f32>,
    /// Past this many trends, the most similar two merge until it is met.
    pub max_trends: Option<usize>,
}

/// Neighbours listed per point for the neighbour-vote assignment when no
/// reduction has listed them already.
const VOTERS: usize = 15;
/// Keywords per trend compared when merging.
const MERGE_KEYWORDS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineParams {
    /// HDBSCAN's parameters; `metric` is the input's, the reduced layout is
    /// always euclidean.
    pub hdbscan: Params,
    pub reduction: Option<ReductionParams>,
    pub assignment: Option<AssignmentParams>,
    pub merging: MergeParams,
}

impl Default for PipelineParams {
    /// The best setting measured on short texts (docs/benchmarks.md, "Trend
    /// quality"): cosine, reduced to 5 dimensions, HDBSCAN with
    /// `min_cluster_size` 5, `min_samples` 3 and excess of mass, noise
    /// joining the trend that holds at least half of its neighbours'
    /// weight, no merging. Smaller sizes than BERTopic's 10 because the
    /// trends they find are finer, not noisier: on the fortunes and the
    /// glosses both the share of signals in a trend and the V-measure of
    /// the clustered ones rose against 10 and 5. A fixed `min_samples`
    /// rather than the package's `min_cluster_size`: at 15 and 15 excess of
    /// mass kept 2 trends of 3,044 fortunes.
    fn default() -> Self {
        Self {
            hdbscan: Params {
                metric: Metric::Cosine,
                min_samples: Some(3),
                ..Params::new(5)
            },
            reduction: Some(ReductionParams::default()),
            assignment: Some(AssignmentParams {
                by: AssignBy::Neighbours,
                threshold: AssignmentParams::default_threshold(AssignBy::Neighbours),
            }),
            merging: MergeParams::default(),
        }
    }
}

impl PipelineParams {
    /// HDBSCAN alone, as before the pipeline had its other steps.
    pub fn hdbscan_only(hdbscan: Params) -> Self {
        Self {
            hdbscan,
            reduction: None,
            assignment: None,
            merging: MergeParams::default(),
        }
    }

    pub fn validate(&self) -> Result<(), PipelineError> {
        self.hdbscan.validate()?;
        if let Some(reduction) = &self.reduction {
            reduction.validate()?;
        }
        if let Some(a) = &self.assignment
            && !(0.0..=1.0).contains(&a.threshold)
        {
            return Err(PipelineError::AssignmentThreshold(a.threshold));
        }
        if let Some(t) = self.merging.threshold
            && !(-1.0..=1.0).contains(&t)
        {
            return Err(PipelineError::MergeThreshold(t));
        }
        if self.merging.max_trends == Some(0) {
            return Err(PipelineError::MaxTrends);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Hdbscan(#[from] HdbscanError),
    #[error(transparent)]
    Reduction(#[from] ReductionError),
    #[error("the assignment threshold must be between 0 and 1, got {0}")]
    AssignmentThreshold(f32),
    #[error("the merge threshold must be a cosine between -1 and 1, got {0}")]
    MergeThreshold(f32),
    #[error("max_trends must be at least 1")]
    MaxTrends,
    #[error("{texts} texts for {points} points")]
    Texts { texts: usize, points: usize },
}

impl From<DistanceError> for PipelineError {
    fn from(e: DistanceError) -> Self {
        PipelineError::Hdbscan(HdbscanError::Points(e))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PipelineTimings {
    /// The reduction's neighbour lists, in the input space.
    pub neighbours: Duration,
    /// The reduction's graph and layout.
    pub layout: Duration,
    pub clustering: Timings,
    pub assignment: Duration,
    pub merging: Duration,
}

impl PipelineTimings {
    /// Neighbour lists and layout.
    pub fn reduction(&self) -> Duration {
        self.neighbours + self.layout
    }

    pub fn total(&self) -> Duration {
        self.reduction() + self.clustering.total() + self.assignment + self.merging
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trends {
    /// Trend of each point, `0..n_trends`, or −1.
    pub labels: Vec<i32>,
    /// HDBSCAN's membership strength; 0 for assigned points and noise.
    pub probabilities: Vec<f32>,
    /// HDBSCAN's GLOSH outlier scores.
    pub outlier_scores: Vec<f32>,
    /// For each point HDBSCAN called noise and the assignment placed, its
    /// score; `None` for HDBSCAN's own members and for what stays noise.
    pub assigned: Vec<Option<f32>>,
    pub n_trends: usize,
    /// Trends HDBSCAN found that merged into others.
    pub merged: usize,
    pub approximate: bool,
    pub timings: PipelineTimings,
}

/// Runs the pipeline over `data` (`n × dim`, row-major). `texts`, one per
/// point or none, let merging compare keywords.
pub fn find_trends(
    data: &[f32],
    dim: usize,
    texts: &[&str],
    params: &PipelineParams,
    device: &Device,
) -> Result<Trends, PipelineError> {
    params.validate()?;
    let rows = Rows::new(data, dim)?;
    let n = rows.len();
    if !texts.is_empty() && texts.len() != n {
        return Err(PipelineError::Texts {
            texts: texts.len(),
            points: n,
        });
    }
    let mut timings = PipelineTimings::default();
    let normalised;
    let (points, distance) = match params.hdbscan.metric {
        Metric::Euclidean => (rows, InputDistance::Euclidean),
        Metric::Cosine => {
            normalised = hdbscan::normalise_rows(data, dim)?;
            (
                Rows::new(&normalised, dim)?,
                InputDistance::CosineOfUnitVectors,
            )
        }
    };

    let mut lists: Option<Neighbours> = None;
    let mut approximate_lists = false;
    let clustering: Clustering = match &params.reduction {
        Some(reduction) if n > reduction.neighbours => {
            let started = Instant::now();
            let (found, approximate) = hdbscan::neighbour_lists(
                points,
                reduction.neighbours - 1,
                params.hdbscan.approximate,
                device,
            )?;
            timings.neighbours = started.elapsed();
            approximate_lists = approximate;
            let started = Instant::now();
            let layout = reduce::reduce(points, &found, distance, reduction)?;
            lists = Some(found);
            timings.layout = started.elapsed();
            let on_layout = Params {
                metric: Metric::Euclidean,
                ..params.hdbscan.clone()
            };
            hdbscan::hdbscan_on(&layout, reduction.dimensions, &on_layout, device)?
        }
        // Too few points for a neighbourhood: nothing to lay out.
        _ => hdbscan::hdbscan_on(data, dim, &params.hdbscan, device)?,
    };
    timings.clustering = clustering.timings;
    let mut labels = clustering.labels;
    let mut probabilities = clustering.probabilities;
    let mut assigned = vec![None; n];

    let started = Instant::now();
    if let Some(assignment) = &params.assignment
        && clustering.n_clusters > 0
    {
        let voters = match (assignment.by, lists) {
            (AssignBy::Neighbours, Some(lists)) => Some(lists),
            (AssignBy::Neighbours, None) => Some(
                hdbscan::neighbour_lists(points, VOTERS - 1, params.hdbscan.approximate, device)?.0,
            ),
            (AssignBy::Centroid, _) => None,
        };
        let placed = assign(
            points,
            distance,
            &labels,
            clustering.n_clusters,
            voters.as_ref(),
            assignment,
        )?;
        for (i, place) in placed.into_iter().enumerate() {
            if let Some((label, score)) = place {
                labels[i] = label as i32;
                assigned[i] = Some(score);
            }
        }
    }
    timings.assignment = started.elapsed();

    let started = Instant::now();
    let groups = merge(
        points,
        &labels,
        clustering.n_clusters,
        texts,
        &params.merging,
    );
    let merged = clustering.n_clusters - groups.iter().copied().max().map_or(0, |g| g + 1);
    for label in &mut labels {
        if let Ok(l) = usize::try_from(*label) {
            *label = groups[l] as i32;
        }
    }
    for (p, a) in probabilities.iter_mut().zip(&assigned) {
        if a.is_some() {
            *p = 0.0;
        }
    }
    timings.merging = started.elapsed();

    Ok(Trends {
        labels,
        probabilities,
        outlier_scores: clustering.outlier_scores,
        assigned,
        n_trends: clustering.n_clusters - merged,
        merged,
        approximate: clustering.approximate || approximate_lists,
        timings,
    })
}

/// Each cluster's unit-length mean direction (zeros when empty).
fn centroids(points: Rows<'_>, labels: &[i32], clusters: usize) -> Vec<Vec<f32>> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); clusters];
    for (i, &label) in labels.iter().enumerate() {
        if let Ok(l) = usize::try_from(label) {
            members[l].push(i);
        }
    }
    members
        .iter()
        .map(|m| unit_mean(m.iter().map(|&i| points.row(i)), points.dim()))
        .collect()
}

/// For each noise point, the trend whose centroid is most similar and that
/// cosine (`None` for members). The most similar centroid is the nearest
/// one between unit vectors, found by the blocked distance kernel (one
/// matrix multiply for all noise points against all centroids; a scalar
/// loop took 426 s for 150,000 noise points and 7,201 trends); the chosen
/// one's cosine is then computed exactly.
fn nearest_centroids(
    points: Rows<'_>,
    labels: &[i32],
    clusters: usize,
) -> Result<Vec<Option<(usize, f32)>>, DistanceError> {
    let dim = points.dim();
    let centres = centroids(points, labels, clusters);
    let kept: Vec<usize> = (0..clusters)
        .filter(|&c| centres[c].iter().any(|&v| v != 0.0))
        .collect();
    let base: Vec<f32> = kept
        .iter()
        .flat_map(|&c| centres[c].iter().copied())
        .collect();
    let mut asking = Vec::new();
    let mut queries = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let row = points.row(i);
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if label < 0 && norm > 0.0 {
            asking.push(i);
            queries.extend(row.iter().map(|v| v / norm));
        }
    }
    let mut out = vec![None; labels.len()];
    if kept.is_empty() || asking.is_empty() {
        return Ok(out);
    }
    let found = nearest_rows(Rows::new(&queries, dim)?, Rows::new(&base, dim)?, 1)?;
    for (q, &i) in asking.iter().enumerate() {
        if let Some(&c) = found.of(q).0.first() {
            let trend = kept[c as usize];
            out[i] = Some((trend, cosine(points.row(i), &centres[trend])));
        }
    }
    Ok(out)
}

/// Where each noise point goes, with its score: `None` for members and for
/// noise that stays noise.
fn assign(
    points: Rows<'_>,
    distance: InputDistance,
    labels: &[i32],
    clusters: usize,
    voters: Option<&Neighbours>,
    params: &AssignmentParams,
) -> Result<Vec<Option<(usize, f32)>>, DistanceError> {
    let nearest = match voters {
        None => nearest_centroids(points, labels, clusters)?,
        Some(_) => Vec::new(),
    };
    // Only the neighbours' trends can win: a vote per trend of the window,
    // zeroed for every noise signal, cost 150,000 × 13,655 writes on a
    // 1,000,000-signal window. One list serves every signal in turn.
    let mut votes: Vec<(usize, f32)> = Vec::new();
    Ok((0..labels.len())
        .map(|i| {
            if labels[i] >= 0 {
                return None;
            }
            let best = match voters {
                None => nearest.get(i).copied().flatten(),
                Some(lists) => {
                    let (indices, distances) = lists.of(i);
                    votes.clear();
                    let mut total = 0.0f32;
                    for (&j, &d) in indices.iter().zip(distances) {
                        let similarity = match distance {
                            InputDistance::CosineOfUnitVectors => 1.0 - d * d / 2.0,
                            InputDistance::Euclidean => {
                                cosine(points.row(i), points.row(j as usize))
                            }
                        }
                        .max(0.0);
                        total += similarity;
                        if let Ok(l) = usize::try_from(labels[j as usize]) {
                            match votes.iter_mut().find(|(trend, _)| *trend == l) {
                                Some((_, v)) => *v += similarity,
                                None => votes.push((l, similarity)),
                            }
                        }
                    }
                    // Equal shares go to the higher trend number.
                    let (trend, vote) = votes
                        .iter()
                        .copied()
                        .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))?;
                    Some((trend, if total > 0.0 { vote / total } else { 0.0 }))
                }
            };
            best.filter(|&(_, score)| score >= params.threshold && score > 0.0)
        })
        .collect())
}

/// The merged trend of each of `clusters`, numbered `0..` in order of each
/// group's first cluster.
fn merge(
    points: Rows<'_>,
    labels: &[i32],
    clusters: usize,
    texts: &[&str],
    params: &MergeParams,
) -> Vec<usize> {
    let needed =
        params.threshold.is_some() || params.max_trends.is_some_and(|most| clusters > most);
    if !needed || clusters < 2 {
        return (0..clusters).collect();
    }
    let mut sizes = vec![0usize; clusters];
    for &label in labels {
        if let Ok(l) = usize::try_from(label) {
            sizes[l] += 1;
        }
    }
    // Size-weighted sums of unit directions: merged centroids stay exact.
    let mut sums: Vec<Vec<f32>> = centroids(points, labels, clusters)
        .into_iter()
        .zip(&sizes)
        .map(|(c, &s)| c.iter().map(|v| v * s as f32).collect())
        .collect();
    let mut keywords: Vec<HashSet<String>> = if texts.is_empty() {
        Vec::new()
    } else {
        class_keywords(texts, labels, clusters, MERGE_KEYWORDS)
            .into_iter()
            .map(|k| k.into_iter().map(|k| k.term).collect())
            .collect()
    };
    let mut alive: Vec<bool> = sizes.iter().map(|&s| s > 0).collect();
    let mut live = alive.iter().filter(|&&a| a).count();
    let mut groups = UnionFind::new(clusters);
    let mut similarity = vec![f32::NEG_INFINITY; clusters * clusters];
    for a in 0..clusters {
        for b in a + 1..clusters {
            if alive[a] && alive[b] {
                similarity[a * clusters + b] = cosine(&sums[a], &sums[b]);
            }
        }
    }
    loop {
        let over = params.max_trends.is_some_and(|most| live > most);
        let shares =
            |a: usize, b: usize| keywords.is_empty() || !keywords[a].is_disjoint(&keywords[b]);
        let mut best: Option<(usize, usize, f32)> = None;
        for a in 0..clusters {
            for b in a + 1..clusters {
                let s = similarity[a * clusters + b];
                let qualifies = over || params.threshold.is_some_and(|t| s >= t && shares(a, b));
                if alive[a] && alive[b] && qualifies && best.is_none_or(|(_, _, top)| s > top) {
                    best = Some((a, b, s));
                }
            }
        }
        let Some((a, b, _)) = best else { break };
        groups.union(a, b);
        alive[b] = false;
        live -= 1;
        let taken = std::mem::take(&mut sums[b]);
        sums[a].iter_mut().zip(&taken).for_each(|(x, y)| *x += y);
        if !keywords.is_empty() {
            let taken = std::mem::take(&mut keywords[b]);
            keywords[a].extend(taken);
        }
        for other in 0..clusters {
            if other != a && alive[other] {
                let (lo, hi) = (a.min(other), a.max(other));
                similarity[lo * clusters + hi] = cosine(&sums[a], &sums[other]);
            }
        }
    }
    let mut numbers = vec![usize::MAX; clusters];
    let mut next = 0;
    (0..clusters)
        .map(|c| {
            let root = groups.find(c);
            if numbers[root] == usize::MAX {
                numbers[root] = next;
                next += 1;
            }
            numbers[root]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hdbscan::hdbscan;

    /// Four tight groups of 30 on four axes of 16 dimensions, the last two
    /// nearly the same direction, and a few points between groups.
    fn signals() -> (Vec<f32>, Vec<&'static str>) {
        let mut rng = fastrand::Rng::with_seed(3);
        let d = 16;
        let mut data = Vec::new();
        let mut texts = Vec::new();
        let axes: [&[(usize, f32)]; 4] = [
            &[(0, 1.0)],
            &[(4, 1.0)],
            &[(8, 1.0), (9, 0.05)],
            &[(8, 1.0), (10, 0.05)],
        ];
        let words = [
            "battery drains",
            "screen cracked",
            "coffee burnt",
            "coffee bitter",
        ];
        for (axis, word) in axes.iter().zip(words) {
            for _ in 0..30 {
                let mut row: Vec<f32> = (0..d).map(|_| (rng.f32() - 0.5) * 0.02).collect();
                for &(c, v) in *axis {
                    row[c] += v;
                }
                data.extend(row);
                texts.push(word);
            }
        }
        for k in 0..6 {
            let mut row: Vec<f32> = (0..d).map(|_| (rng.f32() - 0.5) * 0.02).collect();
            row[0] += 0.6;
            row[11 + k % 5] += 0.8 + 0.1 * (k / 5) as f32;
            data.extend(row);
            texts.push("battery charger");
        }
        (data, texts)
    }

    fn params() -> PipelineParams {
        PipelineParams::hdbscan_only(Params {
            metric: Metric::Cosine,
            ..Params::new(8)
        })
    }

    #[test]
    fn with_every_step_off_the_labels_are_hdbscans() {
        let (data, texts) = signals();
        let p = params();
        let trends = find_trends(&data, 16, &texts, &p, &Device::Cpu).unwrap();
        let alone = hdbscan(&data, 16, &p.hdbscan).unwrap();
        assert_eq!(trends.labels, alone.labels);
        assert_eq!(trends.probabilities, alone.probabilities);
        assert_eq!(trends.n_trends, alone.n_clusters);
        assert!(trends.assigned.iter().all(Option::is_none));
        assert_eq!(trends.merged, 0);
    }

    #[test]
    fn noise_near_a_trend_is_assigned_with_its_score() {
        let (data, _) = signals();
        let normalised = hdbscan::normalise_rows(&data, 16).unwrap();
        let points = Rows::new(&normalised, 16).unwrap();
        // The four groups as trends, the in-between points (which lean to
        // the battery group, 0) as noise.
        let labels: Vec<i32> = (0..126)
            .map(|i| if i < 120 { i / 30 } else { -1 })
            .collect();
        let lists = pulse_kernels::distance::knn(points, VOTERS - 1);
        for (by, voters) in [
            (AssignBy::Centroid, None),
            (AssignBy::Neighbours, Some(&lists)),
        ] {
            let placed = |threshold| {
                assign(
                    points,
                    InputDistance::CosineOfUnitVectors,
                    &labels,
                    4,
                    voters,
                    &AssignmentParams { by, threshold },
                )
                .unwrap()
            };
            let loose = placed(0.3);
            assert!(
                loose[..120].iter().all(Option::is_none),
                "{by}: members stay"
            );
            for place in &loose[120..] {
                let (trend, score) = place.unwrap_or_else(|| panic!("{by}: {loose:?}"));
                assert_eq!(trend, 0, "{by}");
                assert!((0.3..=1.0).contains(&score), "{by}: {score}");
            }
            if by == AssignBy::Centroid {
                assert!(
                    placed(0.99).iter().all(Option::is_none),
                    "no centroid is that near"
                );
            }
        }
    }

    #[test]
    fn the_nearest_centroid_is_the_most_similar_one() {
        // Points of any length (the euclidean input's case), 40 trends.
        let (n, d, clusters) = (900, 24, 40);
        let mut rng = fastrand::Rng::with_seed(5);
        let data: Vec<f32> = (0..n * d).map(|_| rng.f32() * 3.0 - 1.0).collect();
        let points = Rows::new(&data, d).unwrap();
        let labels: Vec<i32> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    -1
                } else {
                    (i % clusters) as i32
                }
            })
            .collect();
        let centres = centroids(points, &labels, clusters);
        let found = nearest_centroids(points, &labels, clusters).unwrap();
        for (i, place) in found.iter().enumerate() {
            if labels[i] >= 0 {
                assert!(place.is_none());
                continue;
            }
            let mut by_cosine: Vec<(f32, usize)> = centres
                .iter()
                .enumerate()
                .map(|(c, centre)| (cosine(points.row(i), centre), c))
                .collect();
            by_cosine.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (trend, score) = place.expect("every noise point has a nearest trend");
            assert_eq!(score, cosine(points.row(i), &centres[trend]));
            // The kernel's rounding may only swap near ties.
            assert!(
                trend == by_cosine[0].1 || by_cosine[0].0 - score < 1e-5,
                "point {i}: {trend} ({score}) against {:?}",
                by_cosine[0]
            );
        }
    }

    #[test]
    fn assigned_points_are_marked_apart_from_members() {
        let (data, texts) = signals();
        let p = PipelineParams {
            hdbscan: Params {
                metric: Metric::Cosine,
                selection: crate::Selection::Leaf,
                min_samples: Some(3),
                ..Params::new(8)
            },
            assignment: Some(AssignmentParams {
                by: AssignBy::Centroid,
                threshold: 0.0,
            }),
            ..params()
        };
        let alone = hdbscan(&data, 16, &p.hdbscan).unwrap();
        let trends = find_trends(&data, 16, &texts, &p, &Device::Cpu).unwrap();
        for i in 0..texts.len() {
            match trends.assigned[i] {
                Some(_) => {
                    assert!(alone.labels[i] < 0);
                    assert!(trends.labels[i] >= 0);
                    assert_eq!(trends.probabilities[i], 0.0);
                }
                None => assert_eq!(trends.labels[i], alone.labels[i]),
            }
        }
    }

    #[test]
    fn near_duplicate_trends_merge_and_max_trends_is_kept() {
        let (data, texts) = signals();
        let alone = find_trends(&data, 16, &texts, &params(), &Device::Cpu).unwrap();
        assert_eq!(alone.n_trends, 4);
        let merging = |merging| PipelineParams {
            merging,
            ..params()
        };
        let merged = find_trends(
            &data,
            16,
            &texts,
            &merging(MergeParams {
                threshold: Some(0.95),
                max_trends: None,
            }),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!((merged.n_trends, merged.merged), (3, 1));
        // The two coffee groups are one trend now, the others untouched.
        assert_eq!(merged.labels[60], merged.labels[119]);
        assert_ne!(merged.labels[0], merged.labels[30]);
        assert!(merged.labels.iter().all(|&l| l < 3));

        // Without a shared keyword the centroids alone do not merge them.
        let other_words: Vec<&str> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if (90..120).contains(&i) {
                    "espresso sour"
                } else {
                    t
                }
            })
            .collect();
        let kept = find_trends(
            &data,
            16,
            &other_words,
            &merging(MergeParams {
                threshold: Some(0.95),
                max_trends: None,
            }),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(kept.n_trends, 4);

        let capped = find_trends(
            &data,
            16,
            &[],
            &merging(MergeParams {
                threshold: None,
                max_trends: Some(2),
            }),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(capped.n_trends, 2);
        assert_eq!(capped.merged, 2);
    }

    #[test]
    fn the_reduced_pipeline_finds_the_groups_and_repeats_itself() {
        let (data, texts) = signals();
        let p = PipelineParams {
            reduction: Some(ReductionParams {
                epochs: Some(200),
                ..Default::default()
            }),
            ..params()
        };
        let first = find_trends(&data, 16, &texts, &p, &Device::Cpu).unwrap();
        assert!(first.n_trends >= 3, "{}", first.n_trends);
        // The battery and screen groups stay apart and whole.
        let battery = first.labels[0];
        assert!(battery >= 0 && first.labels[..30].iter().all(|&l| l == battery));
        assert!(first.labels[30..60].iter().all(|&l| l >= 0 && l != battery));
        let again = find_trends(&data, 16, &texts, &p, &Device::Cpu).unwrap();
        assert_eq!(again.labels, first.labels);
    }

    #[test]
    fn bad_parameters_and_inputs_are_errors() {
        let (data, texts) = signals();
        let bad = |p: PipelineParams| find_trends(&data, 16, &texts, &p, &Device::Cpu).unwrap_err();
        assert_eq!(
            bad(PipelineParams {
                assignment: Some(AssignmentParams {
                    by: AssignBy::Centroid,
                    threshold: 1.5
                }),
                ..params()
            }),
            PipelineError::AssignmentThreshold(1.5)
        );
        assert_eq!(
            bad(PipelineParams {
                merging: MergeParams {
                    threshold: None,
                    max_trends: Some(0)
                },
                ..params()
            }),
            PipelineError::MaxTrends
        );
        assert!(matches!(
            find_trends(&data, 16, &texts[..3], &params(), &Device::Cpu),
            Err(PipelineError::Texts { .. })
        ));
        assert_eq!("neighbors".parse::<AssignBy>(), Ok(AssignBy::Neighbours));
        assert!("nearest".parse::<AssignBy>().is_err());
    }
}
