//! The trend pipeline's defaults on small samples of two real labelled
//! sets, Debian's fortunes and WordNet's glosses (`scripts/test` installs
//! both), embedded with the default model. The floors sit a little under
//! what was measured on these samples (docs/benchmarks.md, "Trend
//! quality", has the whole sets beside BERTopic), so that only a
//! regression fails. The same input twice gives the same labels.

use pulse_bench::labelled::{self, Scores, SetSpec};
use pulse_models::{DEFAULT_MODEL, Device, Embedder, EmbedderOptions};
use pulse_trends::pipeline::{PipelineParams, Trends, find_trends};

struct Floors {
    /// Share of the texts in a trend, members and assigned ones.
    coverage: f64,
    /// Over all texts, noise one class.
    v_measure: f64,
    /// Over the texts in a trend.
    clustered_v_measure: f64,
}

fn embedded(embedder: &Embedder, spec: &str) -> (Vec<i64>, Vec<String>, Vec<f32>) {
    let texts = SetSpec::parse(spec)
        .and_then(|set| set.load())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let strings: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    let mut vectors = Vec::new();
    for batch in strings.chunks(64) {
        vectors.extend(embedder.embed(batch).unwrap().into_iter().flatten());
    }
    (
        labelled::label_ids(&texts),
        texts.into_iter().map(|t| t.text).collect(),
        vectors,
    )
}

fn trends(texts: &[String], vectors: &[f32], dim: usize) -> Trends {
    let strings: Vec<&str> = texts.iter().map(String::as_str).collect();
    find_trends(
        vectors,
        dim,
        &strings,
        &PipelineParams::default(),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn the_default_pipeline_keeps_its_quality_on_real_short_texts() {
    let embedder = Embedder::load(DEFAULT_MODEL, &EmbedderOptions::default()).unwrap();
    let dim = embedder.info().dimension;
    let sets = [
        (
            "fortunes:15",
            Floors {
                coverage: 0.60,
                v_measure: 0.33,
                clustered_v_measure: 0.43,
            },
        ),
        (
            "wordnet:60",
            Floors {
                coverage: 0.64,
                v_measure: 0.39,
                clustered_v_measure: 0.48,
            },
        ),
    ];
    for (spec, floors) in sets {
        let (truth, texts, vectors) = embedded(&embedder, spec);
        let found = trends(&texts, &vectors, dim);
        let scores: Scores = labelled::scores(&truth, &found.labels);
        eprintln!("{spec}: {} texts, {scores:?}", texts.len());
        assert!(
            scores.coverage >= floors.coverage,
            "{spec}: {:.1} % of the texts in a trend, under {:.0} %",
            100.0 * scores.coverage,
            100.0 * floors.coverage
        );
        assert!(
            scores.v_measure >= floors.v_measure,
            "{spec}: V-measure {:.4} under {}",
            scores.v_measure,
            floors.v_measure
        );
        assert!(
            scores.clustered_v_measure >= floors.clustered_v_measure,
            "{spec}: V-measure of the clustered texts {:.4} under {}",
            scores.clustered_v_measure,
            floors.clustered_v_measure
        );
        let again = trends(&texts, &vectors, dim);
        assert_eq!(found.labels, again.labels, "{spec}: the same input twice");
        assert_eq!(
            found.assigned, again.assigned,
            "{spec}: the same input twice"
        );
    }
}
