//! Clustering quality on real text: Debian's `fortunes` (about 15,800
//! short texts in 43 files, one category each; `scripts/test` installs the
//! package), ingested into the server with the default model and
//! re-clustered by the service, against the categories.
//!
//! Embedding all of them takes about twenty minutes in the test profile on
//! two cores, so the test takes every `PULSE_FORTUNES_STRIDE`-th fortune
//! (default 15: 1,015 texts from every category); docs/benchmarks.md has
//! the figures for these and for the whole set.
//!
//! Fortunes are jokes and quotations, not topics, and a category holds
//! whatever its file holds, so no clustering gets near 1 here. The test runs
//! the service's default trend pipeline (reduction, HDBSCAN, assignment):
//! what regresses visibly is how many signals end up in a trend, and how
//! well the trends agree with the categories: V-measure and ARI over all
//! signals (noise one class), V-measure against the same labels shuffled
//! (chance), and both over the clustered signals alone. Assigned members
//! must be marked as such, as many as each trend says.

mod common;

use common::{channel, members, start, succeeded};
use pulse_bench::labelled::{self, FORTUNES, LabelledText};
use pulse_proto::v1 as pb;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use pulse_trends::quality::{adjusted_rand_index, v_measure};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::path::Path;

/// A little under what was measured at the default stride
/// (docs/benchmarks.md), so that only a regression fails.
const V_MEASURE_FLOOR: f64 = 0.31;
/// V-measure over what the same labels, shuffled, score (chance). Many
/// small trends raise the chance score (0.23 for the defaults' 61 trends
/// here, against 0.35).
const V_MEASURE_OVER_CHANCE_FLOOR: f64 = 0.08;
/// The default trends are fine-grained, which ARI over all signals, noise
/// one class, scores low (0.03 here; BERTopic's on the whole set is no
/// higher).
const ARI_FLOOR: f64 = 0.015;
/// Signals in a trend, HDBSCAN's members and assigned ones together.
const COVERAGE_FLOOR: f64 = 0.60;
const CLUSTERED_V_MEASURE_FLOOR: f64 = 0.39;
const CLUSTERED_ARI_FLOOR: f64 = 0.05;
const DEFAULT_STRIDE: usize = 15;

/// Every fortune, labelled with its category.
fn fortunes() -> Vec<LabelledText> {
    labelled::load(Path::new(FORTUNES), 1)
        .unwrap_or_else(|e| panic!("{e:#} (scripts/test installs the `fortunes` package)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortunes_cluster_along_their_categories() {
    assert!(
        Path::new(FORTUNES).is_dir(),
        "{FORTUNES} is missing: install the `fortunes` package"
    );
    let all = fortunes();
    assert!(all.len() > 15_000, "{} fortunes", all.len());
    let stride: usize = std::env::var("PULSE_FORTUNES_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_STRIDE);
    let fortunes: Vec<LabelledText> = all.into_iter().step_by(stride).collect();
    let server = start(&[]).await;
    let mut signals = SignalServiceClient::new(channel(&server).await);
    let mut trends = TrendServiceClient::new(channel(&server).await);

    let started = std::time::Instant::now();
    let stream: Vec<pb::Signal> = fortunes
        .iter()
        .enumerate()
        .map(|(i, fortune)| pb::Signal {
            id: format!("f{i}"),
            brand: "fortunes".into(),
            source: fortune.label.clone(),
            text: fortune.text.clone(),
            ts: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect();
    let summary = signals
        .ingest_stream(tokio_stream::iter(stream))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary.stored as usize,
        fortunes.len(),
        "{:?}",
        summary.rejections.first()
    );
    eprintln!(
        "ingested {} fortunes in {:.1} s",
        fortunes.len(),
        started.elapsed().as_secs_f64()
    );

    let started = std::time::Instant::now();
    let job = trends
        .recluster(pb::ReclusterRequest {
            brand: "fortunes".into(),
            from: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
            // The service's defaults: the trend pipeline as measured best
            // on short texts (docs/benchmarks.md compares others).
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = succeeded(&mut trends, &job).await;
    eprintln!(
        "re-clustered in {:.1} s: {} trends, {} noise",
        started.elapsed().as_secs_f64(),
        done.trends,
        done.noise
    );

    // Each signal's trend, read back through the service.
    let listed = trends
        .list_trends(pb::ListTrendsRequest {
            brand: "fortunes".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut trend_of: HashMap<String, i64> = HashMap::new();
    let mut assigned = 0u64;
    for trend in &listed.trends {
        let mut marked = 0u64;
        for member in members(&mut trends, "fortunes", trend.id, 1000).await.0 {
            if member.assigned {
                assert!(member.assignment_score > 0.0 && member.probability == 0.0);
                marked += 1;
            }
            let id = member.signal.unwrap().signal.unwrap().id;
            trend_of.insert(id, trend.id);
        }
        assert_eq!(
            marked, trend.assigned,
            "trend {}: assigned members",
            trend.id
        );
        assigned += marked;
    }
    let categories = labelled::label_ids(&fortunes);
    let labels: Vec<i64> = (0..fortunes.len())
        .map(|i| trend_of.get(&format!("f{i}")).copied().unwrap_or(-1))
        .collect();
    assert_eq!(
        labels.iter().filter(|&&l| l < 0).count() as u64,
        done.noise,
        "every non-noise signal is a member of its trend"
    );
    let v = v_measure(&categories, &labels);
    let ari = adjusted_rand_index(&categories, &labels);
    let mut rng = StdRng::seed_from_u64(15);
    let chance = (0..20)
        .map(|_| {
            let mut shuffled = labels.clone();
            shuffled.shuffle(&mut rng);
            v_measure(&categories, &shuffled)
        })
        .sum::<f64>()
        / 20.0;
    let (clustered_categories, clustered_labels): (Vec<i64>, Vec<i64>) = categories
        .iter()
        .zip(&labels)
        .filter(|(_, label)| **label >= 0)
        .unzip();
    let clustered_v = v_measure(&clustered_categories, &clustered_labels);
    let clustered_ari = adjusted_rand_index(&clustered_categories, &clustered_labels);
    let coverage = 1.0 - done.noise as f64 / fortunes.len() as f64;
    eprintln!(
        "fortunes (every {stride}th, {} texts): {} trends, {} noise, {assigned} assigned ({:.1} % in a trend); \
         all signals: V-measure {v:.4} (shuffled {chance:.4}), ARI {ari:.4}; clustered signals: V-measure \
         {clustered_v:.4}, ARI {clustered_ari:.4}",
        fortunes.len(),
        listed.trends.len(),
        done.noise,
        100.0 * coverage
    );
    if stride == DEFAULT_STRIDE {
        assert!(
            coverage >= COVERAGE_FLOOR,
            "{:.1} % of signals in a trend, under {:.0} %",
            100.0 * coverage,
            100.0 * COVERAGE_FLOOR
        );
        assert!(ari >= ARI_FLOOR, "ARI {ari:.4} fell under {ARI_FLOOR}");
        assert!(
            v >= V_MEASURE_FLOOR,
            "V-measure {v:.4} fell under {V_MEASURE_FLOOR}"
        );
        assert!(
            v - chance >= V_MEASURE_OVER_CHANCE_FLOOR,
            "V-measure {v:.4} is within {V_MEASURE_OVER_CHANCE_FLOOR} of chance ({chance:.4})"
        );
        assert!(
            clustered_v >= CLUSTERED_V_MEASURE_FLOOR,
            "V-measure of the clustered signals {clustered_v:.4} fell under {CLUSTERED_V_MEASURE_FLOOR}"
        );
        assert!(
            clustered_ari >= CLUSTERED_ARI_FLOOR,
            "ARI of the clustered signals {clustered_ari:.4} fell under {CLUSTERED_ARI_FLOOR}"
        );
    }
    server.shutdown().await.unwrap();
}
