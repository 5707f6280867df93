//! What a trend is about and how it moves: per cluster its size, centroid,
//! most representative signals, keywords, source mix, first and last
//! appearance, counts per slice of the window and growth.

use crate::keywords::{Keyword, class_keywords};
use std::collections::HashMap;

/// What the summaries need to know of one clustered signal.
#[derive(Debug, Clone, Copy)]
pub struct SignalFacts<'a> {
    pub text: &'a str,
    pub source: &'a str,
    /// Unix milliseconds.
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryParams {
    pub representatives: usize,
    pub keywords: usize,
    /// Equal slices the window is cut into for the counts over time.
    pub buckets: usize,
    /// Inclusive window bounds, Unix milliseconds.
    pub window: (i64, i64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Representative {
    /// Index of the signal among those summarised.
    pub index: usize,
    pub probability: f32,
    /// Cosine similarity to the centroid.
    pub similarity: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrendSummary {
    /// The cluster label it summarises.
    pub label: usize,
    pub size: usize,
    /// Unit-length mean direction of the members.
    pub centroid: Vec<f32>,
    pub representatives: Vec<Representative>,
    pub keywords: Vec<Keyword>,
    /// Members per source, most first.
    pub sources: Vec<(String, usize)>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub buckets: Vec<u64>,
    pub bucket_width_ms: i64,
    /// Rate in the last quarter of the window over the rate before it, both
    /// add-one smoothed; 1 is steady, above 1 growing.
    pub growth: f64,
}

/// Summarises every cluster of `labels` (−1 is noise) over `signals` and
/// their `vectors` (`n × dim`, row-major).
pub fn summarise(
    vectors: &[f32],
    dim: usize,
    signals: &[SignalFacts<'_>],
    labels: &[i32],
    probabilities: &[f32],
    params: &SummaryParams,
) -> Vec<TrendSummary> {
    let n_clusters = labels
        .iter()
        .filter_map(|&l| usize::try_from(l).ok())
        .max()
        .map_or(0, |l| l + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_clusters];
    for (i, &label) in labels.iter().enumerate() {
        if let Ok(label) = usize::try_from(label) {
            members[label].push(i);
        }
    }
    let texts: Vec<&str> = signals.iter().map(|s| s.text).collect();
    let keywords = class_keywords(&texts, labels, n_clusters, params.keywords);
    let (from, to) = params.window;
    let span = (to - from).max(1) + 1;
    let buckets = params.buckets.max(1);
    let bucket_width_ms = (span + buckets as i64 - 1) / buckets as i64;
    let recent_from = to - span / 4;

    members
        .into_iter()
        .zip(keywords)
        .enumerate()
        .map(|(label, (members, keywords))| {
            let row = |i: usize| &vectors[i * dim..(i + 1) * dim];
            let centroid = unit_mean(members.iter().map(|&i| row(i)), dim);
            let mut representatives: Vec<Representative> = members
                .iter()
                .map(|&i| Representative {
                    index: i,
                    probability: probabilities[i],
                    similarity: cosine(row(i), &centroid),
                })
                .collect();
            representatives.sort_by(|a, b| {
                b.probability
                    .total_cmp(&a.probability)
                    .then(b.similarity.total_cmp(&a.similarity))
                    .then(a.index.cmp(&b.index))
            });
            representatives.truncate(params.representatives);

            let mut sources: HashMap<&str, usize> = HashMap::new();
            let mut counts = vec![0u64; buckets];
            let (mut recent, mut earlier) = (0u64, 0u64);
            let mut first_seen = i64::MAX;
            let mut last_seen = i64::MIN;
            for &i in &members {
                let signal = &signals[i];
                *sources.entry(signal.source).or_insert(0) += 1;
                first_seen = first_seen.min(signal.ts);
                last_seen = last_seen.max(signal.ts);
                let slot = ((signal.ts - from).max(0) / bucket_width_ms) as usize;
                counts[slot.min(buckets - 1)] += 1;
                if signal.ts >= recent_from {
                    recent += 1;
                } else {
                    earlier += 1;
                }
            }
            let mut sources: Vec<(String, usize)> = sources
                .into_iter()
                .map(|(s, c)| (s.to_string(), c))
                .collect();
            sources.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let recent_span = (to - recent_from + 1) as f64;
            let earlier_span = (recent_from - from).max(1) as f64;
            let growth =
                ((recent + 1) as f64 / recent_span) / ((earlier + 1) as f64 / earlier_span);

            TrendSummary {
                label,
                size: members.len(),
                centroid,
                representatives,
                keywords,
                sources,
                first_seen,
                last_seen,
                buckets: counts,
                bucket_width_ms,
                growth,
            }
        })
        .collect()
}

/// The normalised mean of `rows`; zeros when they cancel out.
pub fn unit_mean<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    for row in rows {
        let norm = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += f64::from(v) / norm);
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    sum.iter()
        .map(|&v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 })
        .collect()
}

/// Cosine similarity; 0 when either side is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (dot / (aa.sqrt() * bb.sqrt())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(texts: &[&'a str], sources: &[&'a str], ts: &[i64]) -> Vec<SignalFacts<'a>> {
        texts
            .iter()
            .zip(sources)
            .zip(ts)
            .map(|((&text, &source), &ts)| SignalFacts { text, source, ts })
            .collect()
    }

    #[test]
    fn summaries_describe_each_cluster() {
        let vectors = [
            1.0, 0.0, //
            0.9, 0.1, //
            0.8, 0.0, //
            0.0, 1.0, //
            0.1, 0.9, //
            0.5, 0.5,
        ];
        let signals = facts(
            &[
                "battery drains",
                "battery dies",
                "battery hot",
                "camera blurry",
                "camera dark",
                "shipping",
            ],
            &["x", "x", "reddit", "news", "news", "x"],
            &[0, 10, 90, 95, 99, 50],
        );
        let labels = [0, 0, 0, 1, 1, -1];
        let probabilities = [1.0, 0.5, 0.9, 1.0, 1.0, 0.0];
        let params = SummaryParams {
            representatives: 2,
            keywords: 1,
            buckets: 4,
            window: (0, 99),
        };
        let trends = summarise(&vectors, 2, &signals, &labels, &probabilities, &params);
        assert_eq!(trends.len(), 2);
        let battery = &trends[0];
        assert_eq!(battery.size, 3);
        assert_eq!(battery.keywords[0].term, "battery");
        assert_eq!(
            battery
                .representatives
                .iter()
                .map(|r| r.index)
                .collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(
            battery.sources,
            vec![("x".to_string(), 2), ("reddit".to_string(), 1)]
        );
        assert_eq!((battery.first_seen, battery.last_seen), (0, 90));
        assert_eq!(battery.buckets, vec![2, 0, 0, 1]);
        assert_eq!(battery.bucket_width_ms, 25);
        let norm: f32 = battery.centroid.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        // Both camera signals are in the last quarter: it is growing; the
        // battery one is not.
        assert!(trends[1].growth > 1.0, "{}", trends[1].growth);
        assert!(battery.growth < trends[1].growth);
    }

    #[test]
    fn no_clusters_no_summaries() {
        let signals = facts(&["a"], &["x"], &[0]);
        let params = SummaryParams {
            representatives: 3,
            keywords: 3,
            buckets: 3,
            window: (0, 0),
        };
        assert!(summarise(&[1.0], 1, &signals, &[-1], &[0.0], &params).is_empty());
    }

    #[test]
    fn cosine_of_zero_vectors_is_zero() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    }
}
