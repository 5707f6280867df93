//! `pulse embed`: JSON lines (`{"id":..,"text":..}`) or plain lines in,
//! JSON lines (`id`, `embedding`, `tokens`, `truncated`) out, in input order.
//! A record that cannot be embedded gets `{"id":..,"error":..}` and the rest
//! go on; the exit status is then 2.

use super::ModelArgs;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pulse_models::{Embedder, TokenizedText};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::num::NonZeroUsize;
use std::process::ExitCode;

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// File to read, or - for standard input.
    #[arg(long, short, default_value = "-")]
    input: String,
    /// File to write, or - for standard output.
    #[arg(long, short, default_value = "-")]
    output: String,
    /// Texts per forward pass.
    #[arg(long, default_value = "32")]
    batch_size: NonZeroUsize,
    /// A prompt of the model's (`prompts` in its
    /// config_sentence_transformers.json, e.g. `query`) put before every
    /// text. Without it or --prompt, the model's default prompt, if any.
    #[arg(long, conflicts_with = "prompt")]
    prompt_name: Option<String>,
    /// A literal prompt put before every text; "" for none.
    #[arg(long)]
    prompt: Option<String>,
}

/// Batches read ahead, so texts of similar length can share a batch.
const BATCHES_PER_WINDOW: usize = 8;

/// One input line, parsed.
enum Entry {
    Text { id: Value, text: String },
    Invalid { id: Value, error: String },
}

fn parse_line(line_number: usize, bytes: &[u8]) -> Option<Entry> {
    let fallback_id = Value::from(line_number);
    let line = match std::str::from_utf8(bytes) {
        Ok(line) => line.trim_end_matches(['\n', '\r']),
        Err(e) => {
            return Some(Entry::Invalid {
                id: fallback_id,
                error: format!("line {line_number} is not UTF-8: {e}"),
            });
        }
    };
    if line.trim().is_empty() {
        return None;
    }
    if !line.trim_start().starts_with('{') {
        return Some(Entry::Text {
            id: fallback_id,
            text: line.to_string(),
        });
    }
    let invalid = |error: String| {
        Some(Entry::Invalid {
            id: Value::from(line_number),
            error,
        })
    };
    let mut object = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return invalid(format!("line {line_number} is not a JSON object")),
        Err(e) => return invalid(format!("line {line_number} is not valid JSON: {e}")),
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => fallback_id,
        Some(id @ (Value::String(_) | Value::Number(_))) => id,
        Some(_) => {
            return invalid(format!(
                "line {line_number}: `id` must be a string or a number"
            ));
        }
    };
    match object.remove("text") {
        Some(Value::String(text)) => Some(Entry::Text { id, text }),
        Some(_) => Some(Entry::Invalid {
            id,
            error: format!("line {line_number}: `text` must be a string"),
        }),
        None => Some(Entry::Invalid {
            id,
            error: format!("line {line_number} has no `text`"),
        }),
    }
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let embedder = args.model.load()?;
    let prompt = embedder.prompt(args.prompt_name.as_deref(), args.prompt.as_deref())?;
    let (reader, progress): (Box<dyn BufRead>, ProgressBar) = if args.input == "-" {
        (Box::new(std::io::stdin().lock()), ProgressBar::hidden())
    } else {
        let file =
            File::open(&args.input).with_context(|| format!("cannot open {}", args.input))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = ProgressBar::new(size).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}")
                .context("progress bar template")?,
        );
        (Box::new(BufReader::new(file)), bar)
    };
    let writer: Box<dyn Write> = if args.output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output).with_context(|| format!("cannot create {}", args.output))?,
        )
    };
    let mut writer = BufWriter::new(writer);
    let summary = embed_stream(
        &embedder,
        reader,
        &mut writer,
        (args.batch_size.get(), &prompt),
        &progress,
    )?;
    writer.flush().context("cannot write the output")?;
    progress.finish_and_clear();
    if summary.failed > 0 {
        eprintln!(
            "pulse embed: {} of {} records failed (see their `error` field)",
            summary.failed,
            summary.failed + summary.embedded
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// One output line. Typed rather than `serde_json::Value`, so vectors are
/// written as f32 (shortest form) instead of being widened to f64.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Record<'a> {
    Embedded {
        id: &'a Value,
        embedding: Vec<f32>,
        tokens: usize,
        truncated: bool,
    },
    Failed {
        id: &'a Value,
        error: &'a str,
    },
}

struct Summary {
    embedded: usize,
    failed: usize,
}

fn embed_stream(
    embedder: &Embedder,
    mut reader: impl BufRead,
    writer: &mut impl Write,
    (batch_size, prompt): (usize, &str),
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let window = batch_size.saturating_mul(BATCHES_PER_WINDOW);
    let mut summary = Summary {
        embedded: 0,
        failed: 0,
    };
    let mut line_number = 0;
    let mut line = Vec::new();
    let mut entries = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .context("cannot read the input")?;
        if read > 0 {
            line_number += 1;
            progress.inc(read as u64);
            entries.extend(parse_line(line_number, &line));
        }
        if entries.len() >= window || (read == 0 && !entries.is_empty()) {
            let batching = (batch_size, prompt);
            embed_window(embedder, &entries, writer, batching, &mut summary)?;
            entries.clear();
        }
        if read == 0 {
            return Ok(summary);
        }
    }
}

/// Embeds one window of entries, shortest texts batched together, and writes
/// the results in input order.
fn embed_window(
    embedder: &Embedder,
    entries: &[Entry],
    writer: &mut impl Write,
    (batch_size, prompt): (usize, &str),
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let texts: Vec<&str> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Text { text, .. } => Some(text.as_str()),
            Entry::Invalid { .. } => None,
        })
        .collect();
    let mut tokenized = embedder.tokenize_with_prompt(&texts, prompt).into_iter();
    let results: Vec<Result<TokenizedText, String>> = entries
        .iter()
        .map(|e| match e {
            Entry::Text { .. } => tokenized
                .next()
                .expect("one tokenization per text")
                .map_err(|e| e.to_string()),
            Entry::Invalid { error, .. } => Err(error.clone()),
        })
        .collect();

    let mut order: Vec<usize> = (0..entries.len()).filter(|&i| results[i].is_ok()).collect();
    order.sort_by_key(|&i| results[i].as_ref().map(|t| t.len()).unwrap_or(0));
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; entries.len()];
    for batch in order.chunks(batch_size) {
        let inputs: Vec<TokenizedText> = batch
            .iter()
            .filter_map(|&i| results[i].as_ref().ok().cloned())
            .collect();
        for (&i, vector) in batch.iter().zip(embedder.embed_tokenized(&inputs)?) {
            vectors[i] = Some(vector);
        }
    }

    for ((entry, result), vector) in entries.iter().zip(&results).zip(vectors) {
        let id = match entry {
            Entry::Text { id, .. } | Entry::Invalid { id, .. } => id,
        };
        let record = match (result, vector) {
            (Ok(tokens), Some(embedding)) => {
                summary.embedded += 1;
                Record::Embedded {
                    id,
                    embedding,
                    tokens: tokens.len(),
                    truncated: tokens.truncated,
                }
            }
            (Err(error), _) => {
                summary.failed += 1;
                Record::Failed { id, error }
            }
            (Ok(_), None) => unreachable!("every tokenized text is embedded"),
        };
        serde_json::to_writer(&mut *writer, &record).context("cannot write the output")?;
        writer.write_all(b"\n").context("cannot write the output")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_of(entry: Option<Entry>) -> (Value, String) {
        match entry {
            Some(Entry::Text { id, text }) => (id, text),
            Some(Entry::Invalid { error, .. }) => panic!("invalid: {error}"),
            None => panic!("skipped"),
        }
    }

    fn error_of(entry: Option<Entry>) -> String {
        match entry {
            Some(Entry::Invalid { error, .. }) => error,
            _ => panic!("expected an invalid entry"),
        }
    }

    #[test]
    fn plain_lines_are_numbered() {
        assert_eq!(
            text_of(parse_line(7, b"hello world\r\n")),
            (json!(7), "hello world".into())
        );
        assert!(parse_line(1, b"   \n").is_none());
    }

    #[test]
    fn json_lines_keep_their_ids() {
        assert_eq!(
            text_of(parse_line(1, br#"{"id": "a-1", "text": "hi", "extra": 3}"#)),
            (json!("a-1"), "hi".into())
        );
        assert_eq!(
            text_of(parse_line(4, br#"{"id": 9, "text": ""}"#)),
            (json!(9), String::new())
        );
        assert_eq!(text_of(parse_line(5, br#"{"text": "x"}"#)).0, json!(5));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(error_of(parse_line(2, b"{broken")).contains("line 2 is not valid JSON"));
        assert!(error_of(parse_line(3, br#"{"id": 1}"#)).contains("no `text`"));
        assert!(error_of(parse_line(3, br#"{"text": 5}"#)).contains("`text` must be a string"));
        assert!(error_of(parse_line(3, br#"{"id": [1], "text": "x"}"#)).contains("`id` must be"));
        assert!(error_of(parse_line(6, b"caf\xe9")).contains("not UTF-8"));
    }
}
