//! `pulse-bench models` end to end on the default model: a small grid,
//! trend quality on four clearly separate topics (pairs of one topic's
//! terms), the report, the charts and a comparison of the run with itself.

use pulse_bench::models::{ModelsArgs, Report, compare, run};
use pulse_models::{DEFAULT_MODEL, DTypeSpec, DeviceSpec, EncoderKind};
use std::fmt::Write;

const TOPICS: [(&str, [&str; 5]); 4] = [
    (
        "coffee",
        ["espresso", "latte", "cappuccino", "cold brew", "flat white"],
    ),
    (
        "flights",
        [
            "flight",
            "boarding gate",
            "airport lounge",
            "lost luggage",
            "layover",
        ],
    ),
    (
        "phones",
        [
            "phone battery",
            "cracked screen",
            "charger",
            "phone update",
            "camera lens",
        ],
    ),
    (
        "running",
        [
            "running shoes",
            "marathon",
            "trail run",
            "training plan",
            "race day",
        ],
    ),
];
fn labelled_set(path: &std::path::Path) {
    let mut lines = String::new();
    for (label, things) in TOPICS {
        for a in things {
            for b in things.iter().filter(|b| **b != a) {
                let text = format!("{a} and {b}");
                writeln!(
                    lines,
                    "{}",
                    serde_json::json!({"label": label, "text": text})
                )
                .unwrap();
            }
        }
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn a_small_grid_reports_speed_memory_quality_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("topics.jsonl");
    labelled_set(&set);
    let out_dir = dir.path().join("out");
    let args = ModelsArgs {
        models: vec![DEFAULT_MODEL.to_string()],
        devices: vec![DeviceSpec::Cpu],
        batch_sizes: vec![1, 4],
        seq_lens: vec![8, 32],
        dtype: DTypeSpec::Auto,
        encoder: EncoderKind::Native,
        threads: Some(2),
        tokens_per_case: 64,
        sets: vec![set.display().to_string()],
        no_quality: false,
        charts: vec![
            pulse_bench::models::ChartFormat::Png,
            pulse_bench::models::ChartFormat::Svg,
        ],
        no_charts: false,
        out_dir: out_dir.clone(),
        compare: Vec::new(),
    };
    run(args).unwrap();

    let json = std::fs::read_to_string(out_dir.join("models.json")).unwrap();
    let report: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(report.runs.len(), 1);
    let model = &report.runs[0];
    assert_eq!(
        (model.device.as_str(), model.dtype.as_str()),
        ("cpu", "f32")
    );
    assert_eq!(model.dimension, 384);
    assert!(model.load_seconds > 0.0);
    assert!(model.load_peak_rss_bytes.unwrap() > 20 << 20, "{model:?}");
    let shapes: Vec<(usize, usize)> = model
        .cases
        .iter()
        .map(|c| (c.seq_len, c.batch_size))
        .collect();
    assert_eq!(shapes, [(8, 1), (8, 4), (32, 1), (32, 4)]);
    for case in &model.cases {
        // 64 tokens per case, but never fewer than three batches.
        let batches = 64usize.div_ceil(case.batch_size * case.seq_len).max(3);
        assert_eq!(case.texts, batches * case.batch_size, "{case:?}");
        assert_eq!(case.tokens, case.texts * case.seq_len);
        assert!(case.tokens_per_second > 0.0 && case.texts_per_second > 0.0);
        let l = case.latency_ms;
        assert!(0.0 < l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99, "{case:?}");
        assert!(case.peak_rss_bytes.unwrap() > 20 << 20);
        assert_eq!(case.peak_gpu_bytes, None);
    }
    let [quality] = model.qualities.as_slice() else {
        panic!("one set, one quality: {:?}", model.qualities);
    };
    eprintln!("{quality:?}");
    assert_eq!((quality.texts, quality.labels), (80, 4));
    assert!(quality.recall_at_10 > 0.95, "{quality:?}");
    assert!(quality.precision_at_10 > 0.9, "{quality:?}");
    assert!(quality.scores.v_measure > 0.6, "{quality:?}");
    assert!(quality.scores.ari > 0.4, "{quality:?}");
    assert!(quality.scores.coverage > 0.5, "{quality:?}");

    let markdown = std::fs::read_to_string(out_dir.join("models.md")).unwrap();
    assert!(
        markdown.contains("| all-MiniLM-L6-v2 cpu f32 | 32 | 4 |"),
        "{markdown}"
    );
    assert!(markdown.contains("recall@10"));
    for chart in ["models-throughput.png", "models-latency.png"] {
        let bytes = std::fs::read(out_dir.join(chart)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{chart}");
    }
    let svg = std::fs::read_to_string(out_dir.join("models-latency.svg")).unwrap();
    assert!(svg.contains("batch size") && svg.contains("32 tokens, p99"));

    let same = compare(&report, &report);
    assert!(same.contains("1 of 1 runs paired"), "{same}");
    assert!(same.matches("| 1.00× |").count() >= 4, "{same}");
    assert!(same.contains("(+0.0000)"), "{same}");
}

#[test]
fn a_missing_labelled_set_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let args = ModelsArgs {
        models: vec![DEFAULT_MODEL.to_string()],
        devices: vec![DeviceSpec::Cpu],
        batch_sizes: vec![1],
        seq_lens: vec![8],
        dtype: DTypeSpec::Auto,
        encoder: EncoderKind::Native,
        threads: Some(1),
        tokens_per_case: 8,
        sets: vec![dir.path().join("nothing.jsonl").display().to_string()],
        no_quality: false,
        charts: Vec::new(),
        no_charts: true,
        out_dir: dir.path().to_path_buf(),
        compare: Vec::new(),
    };
    let error = format!("{:#}", run(args.clone()).unwrap_err());
    assert!(
        error.contains("--no-quality") && error.contains("nothing.jsonl"),
        "{error}"
    );
    let too_long = ModelsArgs {
        no_quality: true,
        seq_lens: vec![300],
        ..args
    };
    let error = format!("{:#}", run(too_long).unwrap_err());
    assert!(error.contains("sequence length of 300"), "{error}");
}
