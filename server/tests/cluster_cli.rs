//! `pulse cluster` as a user runs it: files in, one JSON result out.

use pulse_trends::quality::adjusted_rand_index;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pulse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .output()
        .expect("pulse runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/hdbscan")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("result written")).expect("JSON")
}

fn labels(value: &Value) -> Vec<i32> {
    value
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_i64().expect("integer label") as i32)
        .collect()
}

/// `pulse cluster` on the 384-d fixture with the reference run's
/// parameters, HDBSCAN alone (and `extra` flags): its output and its JSON
/// result.
fn cluster_blobs(extra: &[&str]) -> (Output, Value) {
    let mut flags = vec!["--metric", "euclidean", "--hdbscan-only"];
    flags.extend_from_slice(extra);
    cluster_blobs_with(&flags)
}

/// `pulse cluster` on the 384-d fixture with `min_cluster_size` 15,
/// `min_samples` 5 and `extra` flags.
fn cluster_blobs_with(extra: &[&str]) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let input = fixture("blobs384_n2000.f32");
    let mut args = vec![
        "cluster",
        "--input",
        input.to_str().unwrap(),
        "--dim",
        "384",
        "--min-cluster-size",
        "15",
        "--min-samples",
        "5",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = pulse(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let result = read_json(&out);
    (output, result)
}

#[test]
fn clusters_raw_f32_like_the_python_package() {
    let (output, result) = cluster_blobs(&[]);
    assert!(
        stderr(&output).contains("2000 points × 384: 12 clusters"),
        "{}",
        stderr(&output)
    );
    let reference = read_json(&fixture("blobs384_n2000.run0.json"));
    assert_eq!(result["n_clusters"], 12);
    assert_eq!(result["approximate"], false);
    assert_eq!(result["params"]["min_samples"], 5);
    assert_eq!(result["probabilities"].as_array().unwrap().len(), 2000);
    assert_eq!(result["outlier_scores"].as_array().unwrap().len(), 2000);
    assert!(result["timings"]["clustering_seconds"].as_f64().unwrap() > 0.0);
    let ari = adjusted_rand_index(&labels(&reference["labels"]), &labels(&result["labels"]));
    assert!(ari >= 0.99, "ARI {ari}");
}

#[test]
fn approximate_mode_says_so() {
    let (output, result) = cluster_blobs(&["--approximate"]);
    assert!(
        stderr(&output).contains("(approximate)"),
        "{}",
        stderr(&output)
    );
    assert_eq!(result["approximate"], true);
    let reference = read_json(&fixture("blobs384_n2000.run0.json"));
    let ari = adjusted_rand_index(&labels(&reference["labels"]), &labels(&result["labels"]));
    assert!(ari >= 0.95, "ARI {ari}");
}

#[test]
fn the_default_pipeline_reduces_assigns_and_repeats_itself() {
    let (output, result) = cluster_blobs_with(&[]);
    assert!(
        stderr(&output).contains("2000 points × 384"),
        "{}",
        stderr(&output)
    );
    assert_eq!(result["params"]["metric"], "cosine");
    assert_eq!(result["params"]["reduce"], true);
    assert_eq!(result["params"]["reduce_dimensions"], 5);
    assert_eq!(result["params"]["assign"], "neighbours");
    assert!(result["timings"]["reduction_seconds"].as_f64().unwrap() > 0.0);
    // Against the Python package's clusters, over the points it clustered
    // (the pipeline assigns much of its noise).
    let reference = labels(&read_json(&fixture("blobs384_n2000.run0.json"))["labels"]);
    let got = labels(&result["labels"]);
    let clustered: Vec<usize> = (0..2000).filter(|&i| reference[i] >= 0).collect();
    let ari = adjusted_rand_index(
        &clustered.iter().map(|&i| reference[i]).collect::<Vec<_>>(),
        &clustered.iter().map(|&i| got[i]).collect::<Vec<_>>(),
    );
    assert!(
        ari >= 0.9,
        "ARI {ari} against the Python package's clusters"
    );
    // Assigned signals are marked, with their score, and only those.
    let assigned = result["assigned"].as_array().unwrap();
    assert_eq!(assigned.len(), 2000);
    let probabilities = result["probabilities"].as_array().unwrap();
    for (i, score) in assigned.iter().enumerate() {
        if let Some(score) = score.as_f64() {
            assert!((0.2..=1.0).contains(&score), "{score}");
            assert!(got[i] >= 0);
            assert_eq!(probabilities[i], 0.0);
        }
    }
    let (_, again) = cluster_blobs_with(&[]);
    assert_eq!(
        again["labels"], result["labels"],
        "same input and seed, same labels"
    );

    let (_, capped) = cluster_blobs_with(&[
        "--no-reduce",
        "--assign",
        "neighbours",
        "--assign-threshold",
        "0.9",
        "--max-trends",
        "3",
    ]);
    assert_eq!(capped["n_clusters"], 3);
    assert_eq!(capped["params"]["reduce"], false);
    assert_eq!(capped["params"]["assign"], "neighbours");
    assert_eq!(capped["params"]["max_trends"], 3);
    assert!(capped["merged"].as_u64().unwrap() >= 1);
}

#[test]
fn clusters_json_lines_and_keeps_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("out.json");
    let mut lines = String::new();
    for i in 0..40 {
        // Two tight groups on either side of the origin, cosine-separable.
        let (sign, jitter) = (if i < 20 { 1.0 } else { -1.0 }, (i % 20) as f64 * 0.001);
        lines.push_str(&format!(
            "{{\"id\": \"s{i}\", \"embedding\": [{}, {}, 0.5]}}\n",
            sign * (1.0 + jitter),
            sign * (0.3 - jitter)
        ));
    }
    std::fs::write(&input, lines).unwrap();
    let output = pulse(&[
        "cluster",
        "-i",
        input.to_str().unwrap(),
        "--metric",
        "cosine",
        "--min-cluster-size",
        "5",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let result = read_json(&out);
    assert_eq!(result["dim"], 3);
    assert_eq!(result["params"]["metric"], "cosine");
    assert_eq!(result["n_clusters"], 2);
    assert_eq!(result["ids"][0], "s0");
    assert_eq!(result["ids"][39], "s39");
    let got = labels(&result["labels"]);
    assert!(got[..20].iter().all(|l| *l == got[0]) && got[20..].iter().all(|l| *l == got[20]));
    assert_ne!(got[0], got[20]);
}

#[test]
fn bad_input_and_parameters_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let out = out.to_str().unwrap();
    let raw = dir.path().join("raw.f32");
    std::fs::write(&raw, [0u8; 10]).unwrap();
    let raw = raw.to_str().unwrap();
    let jsonl = dir.path().join("ragged.jsonl");
    std::fs::write(
        &jsonl,
        "{\"embedding\": [1, 2]}\n{\"embedding\": [1, 2, 3]}\n",
    )
    .unwrap();
    let jsonl = jsonl.to_str().unwrap();

    let cases: [(&[&str], i32, &str); 8] = [
        (
            &["--input", raw, "--dim", "2", "--assign", "nearest"],
            1,
            "unknown assignment `nearest`",
        ),
        (
            &["--input", raw, "--dim", "2", "--reduce-dimensions", "40"],
            1,
            "reduction dimensions must be between 1 and 16",
        ),
        (&["--input", raw], 1, "raw f32 input needs --dim"),
        (
            &["--input", raw, "--dim", "2"],
            1,
            "not a whole number of rows",
        ),
        (
            &["--input", jsonl],
            1,
            "line 2: embedding has 3 values, expected 2",
        ),
        (
            &["--input", "/no/such/file"],
            1,
            "cannot open /no/such/file",
        ),
        (
            &["--input", jsonl, "--format", "f32", "--dim", "1"],
            1,
            "not a whole number of rows",
        ),
        (
            &["--input", raw, "--metric", "manhattan"],
            2,
            "unknown metric `manhattan`",
        ),
    ];
    for (extra, code, message) in cases {
        let mut args = vec!["cluster", "--min-cluster-size", "5", "--output", out];
        args.extend_from_slice(extra);
        let output = pulse(&args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{extra:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{extra:?}: {}",
            stderr(&output)
        );
    }

    let input = fixture("lowdim5_n3000.f32");
    let output = pulse(&[
        "cluster",
        "--input",
        input.to_str().unwrap(),
        "--dim",
        "5",
        "--min-cluster-size",
        "1",
        "--output",
        out,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("`min_cluster_size` must be at least 2"),
        "{}",
        stderr(&output)
    );
}
