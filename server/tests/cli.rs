//! Runs the `pulse` binary as a user would. Needs the default model in the
//! cache (`scripts/fetch-model`; the test scripts run it).

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn pulse(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("PULSE_DEVICE", "cpu")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pulse starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn embeds_json_lines_in_input_order_and_reports_bad_records() {
    let long = "word ".repeat(600);
    let input = format!(
        "{{\"id\": \"a\", \"text\": \"Nike shoes are great\"}}\n\
         not json but a plain line\n\
         {{\"id\": 7, \"text\": \"{long}\"}}\n\
         \n\
         {{\"id\": \"bad\"}}\n\
         {{\"id\": \"b\", \"text\": \"\"}}\n"
    );
    let output = pulse(&["embed", "--batch-size", "2"], input.as_bytes());
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1 of 5 records failed"),
        "{}",
        stderr(&output)
    );

    let records = json_lines(&output);
    let ids: Vec<&Value> = records.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [
            &Value::from("a"),
            &Value::from(2),
            &Value::from(7),
            &Value::from("bad"),
            &Value::from("b")
        ]
    );
    for record in [&records[0], &records[1], &records[2], &records[4]] {
        assert_eq!(
            record["embedding"].as_array().unwrap().len(),
            384,
            "{record}"
        );
    }
    assert_eq!(records[0]["tokens"], 6);
    assert_eq!(records[0]["truncated"], false);
    assert_eq!(records[2]["tokens"], 256);
    assert_eq!(records[2]["truncated"], true);
    assert!(
        records[3]["error"]
            .as_str()
            .unwrap()
            .contains("has no `text`")
    );
    assert_eq!(records[4]["tokens"], 2);
}

#[test]
fn embeds_the_bundled_sample_file_to_a_file() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signals.jsonl");
    let out = tempfile::NamedTempFile::new().unwrap();
    let output = pulse(
        &[
            "embed",
            "--input",
            sample.to_str().unwrap(),
            "--output",
            out.path().to_str().unwrap(),
            "--threads",
            "1",
        ],
        b"",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let written = std::fs::read_to_string(out.path()).unwrap();
    let lines = std::fs::read_to_string(&sample).unwrap().lines().count();
    assert_eq!(written.lines().count(), lines);
    for line in written.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let norm: f64 = record["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}

#[test]
fn models_info_describes_the_default_model() {
    let output = pulse(&["models", "info", "--json"], b"");
    assert!(output.status.success(), "{}", stderr(&output));
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["name"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(info["architecture"], "bert");
    assert_eq!(info["dimension"], 384);
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["normalize"], true);
    assert_eq!(info["max_seq_length"], 256);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["dtype"], "f32");
    let parameters = info["parameters"].as_u64().unwrap();
    assert!(
        (22_000_000..23_000_000).contains(&parameters),
        "{parameters}"
    );
    assert!(
        info["origin"]
            .as_str()
            .unwrap()
            .contains("Hugging Face cache")
    );
}

#[test]
fn a_missing_model_names_every_place_tried() {
    let output = pulse(&["embed", "--model", "nobody/no-such-model"], b"hello\n");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("model `nobody/no-such-model` was not found"),
        "{message}"
    );
    assert!(
        message.contains("local directory nobody/no-such-model"),
        "{message}"
    );
    assert!(
        message.contains("models--nobody--no-such-model"),
        "{message}"
    );
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let output = pulse(&["embed", "--device", "tpu:0"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("invalid device `tpu:0`"),
        "{}",
        stderr(&output)
    );

    let output = pulse(&["embed", "--input", "/no/such/file.jsonl"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot open /no/such/file.jsonl"),
        "{}",
        stderr(&output)
    );

    let output = pulse(&["embed", "--batch-size", "0"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_prompt_goes_before_every_text() {
    let text = "trends of the week";
    let prompted = pulse(&["embed", "--prompt", "query: "], text.as_bytes());
    assert!(prompted.status.success(), "{}", stderr(&prompted));
    let by_hand = pulse(&["embed"], format!("query: {text}").as_bytes());
    let (a, b) = (&json_lines(&prompted)[0], &json_lines(&by_hand)[0]);
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["embedding"], b["embedding"]);

    // all-MiniLM-L6-v2 names no prompts.
    let unknown = pulse(&["embed", "--prompt-name", "query"], text.as_bytes());
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no prompt named `query`; its prompts: none"),
        "{}",
        stderr(&unknown)
    );
}

/// Needs all-mpnet-base-v2 in the cache (`scripts/fetch-model
/// all-mpnet-base-v2`; the test scripts run it).
#[test]
fn models_info_describes_mpnet() {
    let output = pulse(
        &[
            "models",
            "info",
            "sentence-transformers/all-mpnet-base-v2",
            "--json",
        ],
        b"",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["architecture"], "mpnet");
    assert_eq!(info["dimension"], 768);
    assert_eq!(info["max_seq_length"], 384);
    // The encoder without its pooler head, as sentence-transformers runs
    // it: 109,486,464 less the pooler's 590,592.
    assert_eq!(info["parameters"], 108_895_872);
}
