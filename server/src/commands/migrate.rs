//! `pulse migrate`: copies an embedded store's collections (signals and
//! trend runs, vectors and payloads, the same point ids) into a Qdrant
//! server or cluster, for a deployment outgrowing one machine. Resumable:
//! where each collection's copy stands is kept in the data directory, and a
//! run started again goes on from there; any repeat overwrites points
//! rather than duplicating them.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pulse_server::config::QdrantArgs;
use pulse_store::{
    COPY_PAGE, EmbeddedStore, RemoteStore, SignalFilter, VectorStore, copy_collection,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use uuid::Uuid;

#[derive(Args)]
pub struct MigrateArgs {
    /// The embedded store to copy from; no `pulse serve` may have it open.
    #[arg(long, env = "PULSE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The target; --qdrant-url is required.
    #[command(flatten)]
    qdrant: QdrantArgs,
    /// Points per page read and written.
    #[arg(long, default_value_t = NonZeroUsize::new(COPY_PAGE).expect("a positive page"))]
    page_size: NonZeroUsize,
    /// Forget where an earlier run stopped and copy everything again.
    #[arg(long)]
    restart: bool,
}

/// Where a migration to one target stands, per collection: the point the
/// next page starts at, or done.
#[derive(Serialize, Deserialize, Default)]
struct Progress {
    target: String,
    collections: BTreeMap<String, CollectionProgress>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct CollectionProgress {
    copied: usize,
    next: Option<Uuid>,
    done: bool,
}

/// The progress file for `target`, beside the collections it copies.
fn progress_path(data_dir: &Path, target: &str) -> PathBuf {
    let slug: String = target
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    data_dir.join(format!("migrate-to-{slug}.json"))
}

fn read_progress(path: &Path, target: &str) -> anyhow::Result<Progress> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a migration progress file", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Progress {
            target: target.to_string(),
            ..Progress::default()
        }),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so a crash mid-write keeps the
/// last complete state.
fn write_progress(path: &Path, progress: &Progress) -> std::io::Result<()> {
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(progress)?)?;
    std::fs::rename(&partial, path)
}

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let Some(options) = args.qdrant.remote_options() else {
        bail!("--qdrant-url names no target: give the Qdrant server or cluster to copy into");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let target_url = options.url.clone();
        let source = EmbeddedStore::open(&args.data_dir)
            .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
        let target = RemoteStore::connect(options)
            .with_context(|| format!("invalid Qdrant address {target_url}"))?;
        let path = progress_path(&args.data_dir, &target_url);
        let mut progress = if args.restart {
            Progress {
                target: target_url.clone(),
                ..Progress::default()
            }
        } else {
            read_progress(&path, &target_url)?
        };
        let collections = source.collections().await?;
        if collections.is_empty() {
            eprintln!("pulse migrate: {} holds no collections", args.data_dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        let everything = SignalFilter::default();
        let mut total = 0;
        for (name, _) in &collections {
            total += source.count(name, &everything).await?;
        }
        let bar = ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} points {per_sec} eta {eta} {msg}")
                .context("progress bar template")?,
        );
        bar.set_position(progress.collections.values().map(|c| c.copied as u64).sum());
        for (name, dimension) in &collections {
            let state = progress.collections.entry(name.clone()).or_default().clone();
            if state.done {
                continue;
            }
            bar.set_message(name.clone());
            let mut copied = state.copied;
            let outcome = copy_collection(
                &source,
                &target,
                (name, *dimension),
                state.next,
                args.page_size.get(),
                |points, next| {
                    copied += points;
                    bar.inc(points as u64);
                    progress.collections.insert(
                        name.clone(),
                        CollectionProgress {
                            copied,
                            next,
                            done: next.is_none(),
                        },
                    );
                    write_progress(&path, &progress)
                        .map_err(|e| pulse_store::StoreError::Backend(format!("cannot keep the migration's place in {}: {e}", path.display())))
                },
            )
            .await;
            if let Err(err) = outcome {
                bar.abandon();
                return Err(err).with_context(|| {
                    format!("copying `{name}` stopped; run the same command again to go on from where it stopped")
                });
            }
        }
        bar.finish_and_clear();
        // Every source point is on the target now (the target may hold more:
        // signals written there since).
        let mut short = Vec::new();
        for (name, dimension) in &collections {
            target.ensure_collection(name, *dimension).await?;
            let (here, there) = (
                source.count(name, &everything).await?,
                target.count(name, &everything).await?,
            );
            println!("{name}: {here} points here, {there} on {target_url}");
            if there < here {
                short.push(name.clone());
            }
        }
        if !short.is_empty() {
            bail!("the target holds fewer points than the source in {}", short.join(", "));
        }
        Ok(ExitCode::SUCCESS)
    })
}
