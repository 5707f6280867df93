//! The parts of `pulse-bench` that `pulse bench` shares: the model
//! benchmark, its labelled texts and synthetic workloads, and how every
//! benchmark writes its report.

pub mod charts;
pub mod labelled;
pub mod memory;
pub mod models;
pub mod workloads;

use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Writes `{name}.json` and `{name}.md` into `dir` and prints the markdown.
pub fn write_report(
    dir: &Path,
    name: &str,
    report: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    print!("{markdown}");
    Ok(())
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs `work` `repeat` times; the run with the median wall time and that
/// time.
pub fn median_run<T, E>(
    repeat: usize,
    mut work: impl FnMut() -> Result<T, E>,
) -> Result<(T, f64), E> {
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        let result = work()?;
        runs.push((result, started.elapsed().as_secs_f64()));
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let middle = runs.len() / 2;
    Ok(runs.swap_remove(middle))
}
