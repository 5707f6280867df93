//! `pulse recluster` and `pulse trends`: clients of a running server's
//! `TrendService`, for schedulers and people.

use super::cluster::ClusterFlags;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pulse_proto::v1 as pb;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

#[derive(Args)]
pub struct ReclusterArgs {
    #[arg(long)]
    brand: String,
    /// Cluster the signals of this span up to now, e.g. `24h`, `7d`, `90m`.
    #[arg(long, conflicts_with = "from")]
    last: Option<humantime::Duration>,
    /// Start of the window (RFC 3339).
    #[arg(long, required_unless_present = "last")]
    from: Option<String>,
    /// End of the window (RFC 3339); default now.
    #[arg(long, requires = "from")]
    to: Option<String>,
    #[command(flatten)]
    server: super::ServerConnection,
    /// Empty: the server's default model.
    #[arg(long, default_value = "")]
    model: String,
    #[command(flatten)]
    cluster: ClusterFlags,
    /// A retried call with the same key gets the first job, not a new one.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Follow the job to its end: exit 0 if it succeeded, 1 if it failed, 3
    /// if it was cancelled.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct TrendsArgs {
    #[arg(long)]
    brand: String,
    #[command(flatten)]
    server: super::ServerConnection,
    #[arg(long, default_value = "")]
    model: String,
    /// A past run; default the latest.
    #[arg(long, default_value = "")]
    run: String,
    /// One JSON object per trend instead of a table.
    #[arg(long)]
    json: bool,
}

async fn connect(
    server: &super::ServerConnection,
) -> anyhow::Result<TrendServiceClient<super::Connected>> {
    Ok(TrendServiceClient::new(server.connect().await?).max_decoding_message_size(64 << 20))
}

fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

fn rfc3339(text: &str) -> anyhow::Result<prost_types::Timestamp> {
    prost_types::Timestamp::from_str(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an RFC 3339 time: {e}"))
}

fn state_name(job: &pb::Job) -> &'static str {
    match pb::JobState::try_from(job.state).unwrap_or_default() {
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Unspecified => "unknown",
    }
}

fn stage_name(job: &pb::Job) -> &'static str {
    match pb::JobStage::try_from(job.stage).unwrap_or_default() {
        pb::JobStage::Loading => "loading",
        pb::JobStage::Clustering => "clustering",
        pb::JobStage::Summarising => "summarising",
        pb::JobStage::Writing => "writing",
        pb::JobStage::Done => "done",
        pb::JobStage::Unspecified => "waiting",
    }
}

fn job_json(job: &pb::Job) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "brand": job.brand,
        "model": job.model,
        "state": state_name(job),
        "stage": stage_name(job),
        "signals": job.signals,
        "trends": job.trends,
        "noise": job.noise,
        "run_id": job.run_id,
        "error": job.error,
    })
}

pub fn recluster(args: ReclusterArgs) -> anyhow::Result<ExitCode> {
    let request = pb::ReclusterRequest {
        brand: args.brand.clone(),
        model: args.model.clone(),
        from: args.from.as_deref().map(rfc3339).transpose()?,
        to: args.to.as_deref().map(rfc3339).transpose()?,
        last: args
            .last
            .map(|d| prost_types::Duration::try_from(Duration::from(d)))
            .transpose()
            .context("`--last` is too long")?,
        params: Some(args.cluster.message()?),
        idempotency_key: args.idempotency_key.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = connect(&args.server).await?;
        let job = client
            .recluster(request)
            .await
            .map_err(refused)?
            .into_inner();
        if !args.wait {
            println!("{}", job_json(&job));
            return Ok(ExitCode::SUCCESS);
        }
        let progress = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .context("progress template")?,
        );
        progress.enable_steady_tick(Duration::from_millis(200));
        let mut updates = client
            .watch_job(pb::JobRequest {
                job_id: job.id.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        let mut last = job;
        while let Some(job) = updates.message().await.map_err(refused)? {
            progress.set_message(format!(
                "{} {}: {} signals, {} written, {} trends",
                state_name(&job),
                stage_name(&job),
                job.signals,
                job.written,
                job.trends
            ));
            last = job;
        }
        progress.finish_and_clear();
        println!("{}", job_json(&last));
        Ok(
            match pb::JobState::try_from(last.state).unwrap_or_default() {
                pb::JobState::Succeeded => ExitCode::SUCCESS,
                pb::JobState::Cancelled => {
                    eprintln!("pulse: the job was cancelled");
                    ExitCode::from(3)
                }
                _ => {
                    eprintln!("pulse: the job failed: {}", last.error);
                    ExitCode::FAILURE
                }
            },
        )
    })
}

fn time(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

pub fn trends(args: TrendsArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = connect(&args.server).await?;
        let listed = client
            .list_trends(pb::ListTrendsRequest {
                brand: args.brand.clone(),
                model: args.model.clone(),
                run_id: args.run.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        let run = listed.run.unwrap_or_default();
        if args.json {
            for trend in &listed.trends {
                let line = serde_json::json!({
                    "id": trend.id,
                    "run_id": trend.run_id,
                    "size": trend.size,
                    "growth": trend.growth,
                    "origin": pb::TrendOrigin::try_from(trend.origin).unwrap_or_default().as_str_name(),
                    "parents": trend.parents,
                    "keywords": trend.keywords.iter().map(|k| &k.term).collect::<Vec<_>>(),
                    "sources": trend.sources.iter().map(|s| (&s.source, s.count)).collect::<Vec<_>>(),
                    "first_seen": time(&trend.first_seen),
                    "last_seen": time(&trend.last_seen),
                    "representatives": trend.representatives.iter().map(|r| &r.text).collect::<Vec<_>>(),
                });
                println!("{line}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "run {} finished {}: {} signals, {} trends, {} noise",
            run.id,
            time(&run.finished),
            run.signals,
            listed.trends.len(),
            run.noise
        );
        println!(
            "{:>6} {:>7} {:>7} {:<10} keywords",
            "id", "size", "growth", "origin"
        );
        for trend in &listed.trends {
            let origin = match pb::TrendOrigin::try_from(trend.origin).unwrap_or_default() {
                pb::TrendOrigin::New => "new",
                pb::TrendOrigin::Continued => "continued",
                pb::TrendOrigin::Split => "split",
                pb::TrendOrigin::Merged => "merged",
                pb::TrendOrigin::Unspecified => "",
            };
            let keywords: Vec<&str> = trend
                .keywords
                .iter()
                .take(6)
                .map(|k| k.term.as_str())
                .collect();
            println!(
                "{:>6} {:>7} {:>7.2} {:<10} {}",
                trend.id,
                trend.size,
                trend.growth,
                origin,
                keywords.join(", ")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
