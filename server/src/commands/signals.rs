//! `pulse ingest` and `pulse search`: clients of a running server's
//! `SignalService`.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pulse_proto::v1 as pb;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Args)]
pub struct IngestArgs {
    /// JSON lines: `id`, `brand`, `text`, and optionally `source`, `ts`
    /// (RFC 3339, or Unix seconds), `url`, `lang`, `attributes`.
    file: String,
    #[command(flatten)]
    server: super::ServerConnection,
    /// The model whose collection receives the signals; empty: the server's default.
    #[arg(long, default_value = "")]
    model: String,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The text to find similar signals for.
    text: String,
    #[command(flatten)]
    server: super::ServerConnection,
    #[arg(long)]
    brand: Option<String>,
    /// Only these sources (repeatable).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Only signals at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only signals at or before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value = "10")]
    limit: u32,
    #[arg(long, default_value = "")]
    model: String,
}

#[derive(Deserialize)]
struct SignalLine {
    id: String,
    brand: String,
    text: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    ts: Option<serde_json::Value>,
    #[serde(default)]
    url: String,
    #[serde(default)]
    lang: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
}

fn timestamp(value: &serde_json::Value) -> anyhow::Result<prost_types::Timestamp> {
    match value {
        serde_json::Value::String(text) => prost_types::Timestamp::from_str(text)
            .map_err(|e| anyhow::anyhow!("`ts` {text:?} is not an RFC 3339 time: {e}")),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 })
            .context("`ts` must be whole Unix seconds"),
        other => anyhow::bail!("`ts` must be a string or a number, not {other}"),
    }
}

fn parse_signal(line: &str) -> anyhow::Result<pb::Signal> {
    let parsed: SignalLine = serde_json::from_str(line)?;
    Ok(pb::Signal {
        ts: parsed.ts.as_ref().map(timestamp).transpose()?,
        id: parsed.id,
        brand: parsed.brand,
        source: parsed.source,
        text: parsed.text,
        url: parsed.url,
        lang: parsed.lang,
        attributes: parsed.attributes,
    })
}

async fn connect(
    server: &super::ServerConnection,
) -> anyhow::Result<SignalServiceClient<super::Connected>> {
    Ok(SignalServiceClient::new(server.connect().await?).max_decoding_message_size(64 << 20))
}

pub fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}")
            .context("progress bar template")?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = connect(&args.server).await?;
        let (sender, receiver) = mpsc::channel::<pb::Signal>(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        if !args.model.is_empty() {
            request.metadata_mut().insert(
                "pulse-model",
                args.model.parse().context("invalid model name")?,
            );
        }
        let started = Instant::now();
        let reader_progress = progress.clone();
        let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut unreadable = Vec::new();
            for (number, line) in BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read line {}", number + 1))?;
                reader_progress.inc(line.len() as u64 + 1);
                if line.trim().is_empty() {
                    continue;
                }
                match parse_signal(&line) {
                    Ok(signal) => {
                        if sender.blocking_send(signal).is_err() {
                            break;
                        }
                    }
                    Err(err) => unreadable.push(format!("line {}: {err}", number + 1)),
                }
            }
            Ok(unreadable)
        });
        let summary = client.ingest_stream(request).await;
        let unreadable = reader.await??;
        let summary = summary
            .context("the server refused the stream")?
            .into_inner();
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "stored {} signals, rejected {}, unreadable {} ({:.0} signals/s)",
            summary.stored,
            summary.rejected,
            unreadable.len(),
            summary.stored as f64 / seconds.max(1e-9)
        );
        for rejection in &summary.rejections {
            eprintln!("  rejected {}: {}", rejection.id, rejection.rejection);
        }
        for line in &unreadable {
            eprintln!("  unreadable {line}");
        }
        Ok(if summary.rejected == 0 && unreadable.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    })
}

pub fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let bound = |text: &Option<String>| {
        text.as_deref()
            .map(|t| timestamp(&serde_json::Value::String(t.to_string())))
            .transpose()
    };
    let filter = pb::SignalFilter {
        brand: args.brand.clone().unwrap_or_default(),
        sources: args.sources.clone(),
        ts_from: bound(&args.from)?,
        ts_to: bound(&args.to)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = connect(&args.server).await?;
        let hits = client
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Text(args.text)),
                filter: Some(filter),
                limit: args.limit,
                with_payload: true,
                model: args.model,
            })
            .await
            .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
            .into_inner()
            .hits;
        for hit in hits {
            let signal = hit.signal.and_then(|s| s.signal).unwrap_or_default();
            let line = serde_json::json!({
                "score": hit.score,
                "id": signal.id,
                "brand": signal.brand,
                "source": signal.source,
                "ts": signal.ts.map(|t| t.to_string()),
                "text": signal.text,
            });
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_signal_lines() {
        let signal = parse_signal(
            r#"{"id": "1", "brand": "nike", "text": "hi", "ts": "2025-03-01T10:00:00Z", "attributes": {"a": "b"}}"#,
        )
        .unwrap();
        assert_eq!(signal.ts.unwrap().seconds, 1_740_823_200);
        assert_eq!(signal.attributes["a"], "b");
        assert_eq!(
            parse_signal(r#"{"id": "1", "brand": "b", "text": "t", "ts": 5}"#)
                .unwrap()
                .ts
                .unwrap()
                .seconds,
            5
        );
        assert!(
            parse_signal(r#"{"id": "1", "brand": "b", "text": "t", "ts": "yesterday"}"#).is_err()
        );
        assert!(parse_signal(r#"{"brand": "b", "text": "t"}"#).is_err());
    }
}
