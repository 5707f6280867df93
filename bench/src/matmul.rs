//! `pulse-bench matmul`: the encoder's dense layers alone. GFLOP/s of
//! pulse-kernels' packed multiply (f32 tile, bf16 where the CPU runs it,
//! int8) and of the gemm crate on the same weights, on all-MiniLM-L6-v2's
//! shapes: a forward's 24 weight matrices (6 layers × QKV, attention
//! output, feed-forward in and out) in turn, as the encoder reads them, for
//! a batch of 256-token texts and for one short text; and 6 rows × 64
//! columns on weights that stay in L1, the micro-kernel's own ceiling.

use crate::{cpu_name, median_run, write_report};
use anyhow::bail;
use pulse_kernels::matmul::{self, F32Layout, PackedMatrix, WeightPrecision};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MatmulArgs {
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Timed runs per case; the median is reported.
    #[arg(long, default_value = "5")]
    repeats: usize,
    /// Where matmul.json and matmul.md are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct Measurement {
    kernel: &'static str,
    threads: usize,
    case: &'static str,
    rows: usize,
    gflops: f64,
    milliseconds: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    micro_kernels: &'static str,
    repeats: usize,
    results: Vec<Measurement>,
}

const HIDDEN: usize = 384;
const INTERMEDIATE: usize = 1536;
const LAYERS: usize = 6;

struct Case {
    name: &'static str,
    rows: usize,
    /// (inputs, outputs) of each matrix, multiplied in turn.
    shapes: Vec<(usize, usize)>,
    /// Passes over the shapes per timed run, for runs long enough to time.
    passes: usize,
}

fn cases() -> Vec<Case> {
    let layer = [
        (HIDDEN, 3 * HIDDEN),
        (HIDDEN, HIDDEN),
        (HIDDEN, INTERMEDIATE),
        (INTERMEDIATE, HIDDEN),
    ];
    let forward: Vec<(usize, usize)> = (0..LAYERS).flat_map(|_| layer).collect();
    vec![
        Case {
            name: "forward, 16 texts of 256 tokens",
            rows: 16 * 256,
            shapes: forward.clone(),
            passes: 1,
        },
        Case {
            name: "forward, one text of 20 tokens",
            rows: 20,
            shapes: forward,
            passes: 20,
        },
        Case {
            name: "6 × 64 outputs, weights in L1",
            rows: 6,
            shapes: vec![(256, 64)],
            passes: 20_000,
        },
    ]
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(7919) + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

pub fn run(args: MatmulArgs) -> anyhow::Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let mut kernels = vec![
        ("pulse f32 tile", WeightPrecision::F32, F32Layout::Panels),
        (
            "gemm crate f32",
            WeightPrecision::F32,
            F32Layout::Transposed,
        ),
        ("pulse int8", WeightPrecision::Int8, F32Layout::Panels),
    ];
    if matmul::bf16_runs_fast() {
        kernels.push(("pulse bf16", WeightPrecision::Bf16, F32Layout::Panels));
    }
    let mut results = Vec::new();
    for case in cases() {
        let input = values(case.rows * INTERMEDIATE, 1);
        let flops: f64 = case
            .shapes
            .iter()
            .map(|(inputs, outputs)| 2.0 * (case.rows * inputs * outputs) as f64)
            .sum::<f64>()
            * case.passes as f64;
        for &(kernel, precision, layout) in &kernels {
            // Distinct weights for every matrix, so a forward reads 24 of
            // them from memory as the encoder does.
            let matrices: Vec<PackedMatrix> = case
                .shapes
                .iter()
                .enumerate()
                .map(|(i, &(inputs, outputs))| {
                    let weight = values(inputs * outputs, i + 2);
                    PackedMatrix::with_layout(&weight, inputs, outputs, precision, layout)
                })
                .collect();
            let mut outputs: Vec<Vec<f32>> = case
                .shapes
                .iter()
                .map(|(_, outputs)| vec![0.0; case.rows * outputs])
                .collect();
            for &threads in &args.threads {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()?;
                let pass = |outputs: &mut Vec<Vec<f32>>| {
                    for _ in 0..case.passes {
                        for (matrix, out) in matrices.iter().zip(outputs.iter_mut()) {
                            let input = &input[..case.rows * matrix.inputs()];
                            matrix.multiply_accumulate(input, out);
                        }
                    }
                };
                pool.install(|| pass(&mut outputs));
                let ((), seconds) = median_run(args.repeats, || {
                    pool.install(|| pass(&mut outputs));
                    anyhow::Ok(())
                })?;
                let measurement = Measurement {
                    kernel,
                    threads,
                    case: case.name,
                    rows: case.rows,
                    gflops: flops / seconds / 1e9,
                    milliseconds: seconds / case.passes as f64 * 1e3,
                };
                eprintln!(
                    "{kernel:<15} {threads} thread(s) {:<34} {:>6.1} GFLOP/s",
                    case.name, measurement.gflops
                );
                results.push(measurement);
            }
        }
    }
    let report = Report {
        cpu: cpu_name(),
        micro_kernels: matmul::micro_kernels(),
        repeats: args.repeats,
        results,
    };
    write_report(&args.out_dir, "matmul", &report, &markdown(&report))
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Dense-layer multiplies on {} (pulse's micro-kernels: {}), median of \
         {} runs; ms is one pass (a forward's 24 matrices, or one tile).\n\n\
         | kernel | threads | case | rows | GFLOP/s | ms |\n\
         | --- | ---: | --- | ---: | ---: | ---: |\n",
        report.cpu, report.micro_kernels, report.repeats
    );
    for m in &report.results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.3} |\n",
            m.kernel, m.threads, m.case, m.rows, m.gflops, m.milliseconds
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_is_all_minilm_dense_work() {
        // 6 layers × (3·384² + 384² + 2·384·1536) multiply-adds per token:
        // 21.2 MFLOP, the figure docs/benchmarks.md divides by.
        for case in &cases()[..2] {
            let per_token: usize = case.shapes.iter().map(|(i, o)| i * o).sum();
            assert_eq!(per_token, 10_616_832);
        }
    }
}
