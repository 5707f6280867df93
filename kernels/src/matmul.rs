//! Activations times a weight matrix packed once at load, on the CPU:
//! `out += input · Wᵀ` for the dense layers of the encoder.
//!
//! The weights are cut into panels of [`PANEL`] output columns, each stored
//! contiguously step by step along the inputs from a cache line on, so the
//! inner loop streams panels from cache while a strip of up to [`STRIP`]
//! input rows is broadcast against them: a register tile of 6 rows × 16
//! columns (AVX2), or with AVX-512 × 64 columns from four panels side by
//! side in f32 and × 32 from two in bf16 and int8. The activations are
//! read where they lie: no per-call packing of either side.
//!
//! Three precisions share that layout and driver:
//! - **f32**: each output takes its products in input order by fused
//!   multiply-add, onto what the output held (the bias, say);
//! - **bf16 weights** (AVX-512 BF16 only): weights and activations rounded
//!   to bfloat16, two inputs per product pair summed into f32 by
//!   `vdpbf16ps` (32 multiply-adds per instruction, twice f32's 16);
//! - **int8 weights**: each output column quantised symmetrically to
//!   ±127, with its own scale for every 64 inputs (an outlier weight then
//!   coarsens only its group); each activation row quantised at run time to
//!   ±32767 (16-bit) with its own scale. The products are summed in i32 by
//!   `vpmaddwd` (AVX2) or `vpdpwssd` (AVX-512 VNNI) and scaled back into the
//!   f32 output every [`GROUP_PAIRS`] input pairs (one quantisation group),
//!   which also keeps the i32 sums from overflowing.
//!
//! Each has micro-kernels chosen at run time and a portable one with the
//! same results up to rounding, used where the instructions are missing.
//! Where the CPU has AMX and Linux grants its tile state (`amx`), bf16 and
//! int8 run on the tiles instead: the same weights and the same
//! quantisation, 16 × 16 sums an instruction.
//! On CPUs with AVX-512 but without its VNNI extension (Skylake-SP), f32
//! weights are instead stored transposed for the `gemm` crate, whose
//! 512-bit kernels outrun the AVX2 tile.
//!
//! The output is cut into tasks of row blocks × panel ranges, spread over
//! rayon's threads. Through [`OutputRows`] the caller can have each task
//! write what its rows start from (a bias, a residual) and map its finished
//! sums (an activation) while they are in that core's cache.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;

use crate::disjoint::DisjointWrites;
use crate::vector_math;
use aligned_vec::{AVec, ConstAlign};
use gemm::Parallelism;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::ops::Range;

/// Output columns in one packed panel: two AVX registers of f32 or i32.
const PANEL: usize = 16;
/// Input rows in one register tile.
const STRIP: usize = 6;
/// Panels side by side in pulse's AVX-512 f32 tile: 6 rows × 64 columns,
/// 24 of the 32 registers summing.
const F32_TILE_PANELS: usize = 4;
/// Panels side by side in the widest register tile.
const MAX_TILE_PANELS: usize = F32_TILE_PANELS;
/// Inputs per block in f32 for a one-panel tile: 16 KiB of weights, which
/// stay in L1 while every strip of the rows passes.
const F32_BLOCK: usize = 256;
/// The AVX-512 f32 tile instead sums over up to this many inputs at once
/// (fewer loads and stores of its 24 sums) and keeps a chunk of panels of
/// about [`F32_CHUNK_BYTES`] in L2 while a task's strips pass: each strip
/// then reads its rows' inputs from L1 for all of the chunk's tiles.
const F32_WIDE_BLOCK: usize = 512;
const F32_CHUNK_BYTES: usize = 384 * 1024;
/// Rows per task for the AVX-512 f32 tile: four times [`ROW_BLOCK`], so a
/// matrix's weights come up from L3 a quarter as often (on 4,096 rows on an
/// Ice Lake Xeon, one thread, a noisy host: 0.87× gemm's speed against
/// 0.78× with 72-row tasks).
const F32_WIDE_TASK_ROWS: usize = 48 * STRIP;
/// Input pairs per block in bf16, likewise: 16 KiB for one panel, halved
/// for two.
const BF16_BLOCK_PAIRS: usize = 128;
/// Input pairs sharing one int8 weight scale per column: a quantisation
/// group of 64 inputs. On all-MiniLM-L6-v2's fixtures the lowest cosine to
/// f32 was 0.99878 with groups of 128 and 0.99917 with 64. Each group's sum
/// is scaled into the output on its own: |sum| ≤ 32 · 2 · 32767 · 127 < 2³¹.
const GROUP_PAIRS: usize = 32;
/// Panels side by side in an AMX block: two sum tiles of 16 columns.
#[cfg(target_arch = "x86_64")]
const AMX_TILE_PANELS: usize = 2;
/// Input pairs in one AMX bf16 step (a 64-byte tile row of activations);
/// bf16 panels store whole steps.
const AMX_STEP_PAIRS: usize = 16;
/// Input pairs per block in int8 (4 KiB of a panel's weights, 8 of two):
/// whole groups, so the micro-kernel runs long enough to pay for its call.
const INT8_BLOCK_PAIRS: usize = 4 * GROUP_PAIRS;
/// Rows per task: a block of activations that stays in L2 while every panel
/// of the task streams past it.
const ROW_BLOCK: usize = 12 * STRIP;
/// Multiply-adds below which a multiply runs on the calling thread.
const PARALLEL_WORK: usize = 64 * 64 * 64;

const INT8_MAX: f32 = 127.0;
const ACTIVATION_MAX: f32 = 32767.0;

/// How the packed weights hold their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightPrecision {
    F32,
    /// bfloat16 weights and activations, products summed in f32; needs
    /// AVX-512 BF16 to run fast (see [`bf16_runs_fast`]).
    Bf16,
    /// Symmetric int8 per output column and group of 64 inputs; activations
    /// in 16 bits per row.
    Int8,
}

impl WeightPrecision {
    pub fn name(self) -> &'static str {
        match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::Bf16 => "bf16",
            WeightPrecision::Int8 => "int8",
        }
    }
}

/// Packed weights start on a cache line, so that a panel's step (16 f32,
/// a bf16 pair's 16 columns) is one line: unaligned, every 64-byte load
/// straddled two and the f32 tile ran 10–30 % slower on an Ice Lake Xeon.
type Lines<T> = AVec<T, ConstAlign<64>>;

fn zeroed_lines<T: Copy>(len: usize, zero: T) -> Lines<T> {
    AVec::from_iter(64, std::iter::repeat_n(zero, len))
}

/// A weight matrix `W` (`outputs × inputs`) packed for [`PackedMatrix::multiply_accumulate`].
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    inputs: usize,
    outputs: usize,
    values: Values,
}

#[derive(Debug, Clone)]
enum Values {
    /// Panel-major; within a panel, input-major: `[panel][input][column]`.
    F32(Lines<f32>),
    /// Wᵀ (`inputs × outputs`, row-major) for the gemm crate, on CPUs with
    /// AVX-512: its 512-bit kernels do twice the AVX2 tile's work per
    /// instruction. In this layout gemm reads it as it lies instead of
    /// repacking it on every call.
    F32Transposed(Vec<f32>),
    /// `[panel][input pair][column][2]`, as int8 below: `vdpbf16ps` takes
    /// the two inputs of a pair side by side.
    Bf16(Lines<bf16>),
    /// `[panel][input pair][column][2]`: the two inputs of a pair side by
    /// side, as `vpmaddwd` multiplies them. An odd last input pairs with 0.
    /// `scales` is `[panel][group][column]`: one per column and group of
    /// `2 · GROUP_PAIRS` inputs, zero in the padding of the last panel.
    Int8 { values: Lines<i8>, scales: Vec<f32> },
    /// As `Int8`, for AMX's `tdpbssd`: `[panel][input quad][column][4]`,
    /// the inputs padded with zeros to whole groups.
    #[cfg(target_arch = "x86_64")]
    Int8Quads { values: Lines<i8>, scales: Vec<f32> },
}

impl PackedMatrix {
    /// `weight` is `outputs × inputs` row-major, as PyTorch stores it; the
    /// caller has checked its length.
    pub fn new(weight: &[f32], inputs: usize, outputs: usize, precision: WeightPrecision) -> Self {
        Self::with_layout(
            weight,
            inputs,
            outputs,
            precision,
            F32Layout::for_this_cpu(),
        )
    }

    /// As [`PackedMatrix::new`], with the f32 layout chosen by the caller
    /// (the int8 layout follows the CPU): for benchmarks that set the two
    /// f32 paths side by side.
    pub fn with_layout(
        weight: &[f32],
        inputs: usize,
        outputs: usize,
        precision: WeightPrecision,
        f32_layout: F32Layout,
    ) -> Self {
        Self::for_kernel(
            weight,
            inputs,
            outputs,
            precision,
            f32_layout,
            Kernel::detect(),
        )
    }

    /// Packs for `kernel`: int8 in quads for AMX, in pairs elsewhere.
    fn for_kernel(
        weight: &[f32],
        inputs: usize,
        outputs: usize,
        precision: WeightPrecision,
        f32_layout: F32Layout,
        kernel: Kernel,
    ) -> Self {
        debug_assert_eq!(weight.len(), inputs * outputs);
        let panels = stored_panels(outputs);
        let values = match precision {
            WeightPrecision::F32 if f32_layout == F32Layout::Transposed => {
                let mut transposed = vec![0.0; weight.len()];
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    for (i, w) in row.iter().enumerate() {
                        transposed[i * outputs + o] = *w;
                    }
                }
                Values::F32Transposed(transposed)
            }
            WeightPrecision::F32 => {
                let mut packed = zeroed_lines(panels * inputs * PANEL, 0.0);
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    let panel = &mut packed[(o / PANEL) * inputs * PANEL..];
                    for (i, w) in row.iter().enumerate() {
                        panel[i * PANEL + o % PANEL] = *w;
                    }
                }
                Values::F32(packed)
            }
            WeightPrecision::Bf16 => {
                let panel_size = bf16_pairs(inputs) * 2 * PANEL;
                let mut packed = zeroed_lines(panels * panel_size, bf16::ZERO);
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    let panel = &mut packed[(o / PANEL) * panel_size..];
                    for (i, w) in row.iter().enumerate() {
                        panel[pair_slot(i, o % PANEL)] = bf16::from_f32(*w);
                    }
                }
                Values::Bf16(packed)
            }
            #[cfg(target_arch = "x86_64")]
            WeightPrecision::Int8 if kernel.is_amx() => {
                let panel_size = int8_quads(inputs) * 4 * PANEL;
                let (values, scales) = quantise_weights(weight, inputs, panels, |column, i| {
                    (column / PANEL) * panel_size + quad_slot(i, column % PANEL)
                });
                Values::Int8Quads { values, scales }
            }
            WeightPrecision::Int8 => {
                let panel_size = inputs.div_ceil(2) * 2 * PANEL;
                let (values, scales) = quantise_weights(weight, inputs, panels, |column, i| {
                    (column / PANEL) * panel_size + pair_slot(i, column % PANEL)
                });
                Values::Int8 { values, scales }
            }
        };
        PackedMatrix {
            inputs,
            outputs,
            values,
        }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn precision(&self) -> WeightPrecision {
        match self.values {
            Values::F32(_) | Values::F32Transposed(_) => WeightPrecision::F32,
            Values::Bf16(_) => WeightPrecision::Bf16,
            Values::Int8 { .. } => WeightPrecision::Int8,
            #[cfg(target_arch = "x86_64")]
            Values::Int8Quads { .. } => WeightPrecision::Int8,
        }
    }

    /// `out += input · Wᵀ`, `input` being `rows × inputs` and `out`
    /// `rows × outputs`, both row-major; the caller has checked the shapes.
    pub fn multiply_accumulate(&self, input: &[f32], out: &mut [f32]) {
        self.multiply(input, out, &KeepOutput);
    }

    /// `out = finish(start + input · Wᵀ)`, with `around` setting each
    /// output row's start and mapping its sums ([`OutputRows`]); shapes as
    /// for [`PackedMatrix::multiply_accumulate`].
    pub fn multiply(&self, input: &[f32], out: &mut [f32], around: &impl OutputRows) {
        debug_assert!(self.inputs > 0 && input.len().is_multiple_of(self.inputs));
        self.multiply_with(Kernel::detect(), input, out, around);
    }

    fn multiply_with(
        &self,
        kernel: Kernel,
        input: &[f32],
        out: &mut [f32],
        around: &impl OutputRows,
    ) {
        let kernel = kernel.for_precision(self.precision());
        let rows = input.len() / self.inputs;
        debug_assert_eq!(out.len(), rows * self.outputs);
        match &self.values {
            Values::F32Transposed(transposed) => {
                each_row_in_parallel(out, self.outputs, |row, values| {
                    around.start(row, 0, values)
                });
                let parallelism = match threads_for(rows * self.outputs * self.inputs) {
                    Some(threads) => Parallelism::Rayon(threads),
                    None => Parallelism::None,
                };
                // SAFETY: `input` is rows × inputs, `out` rows × outputs and
                // the transposed weight inputs × outputs, all row-major
                // (the caller's promise and `new`).
                unsafe {
                    multiply(
                        (rows, self.outputs, self.inputs),
                        Operand::row_major(out.as_mut_ptr(), self.outputs),
                        Accumulate::Yes,
                        Operand::row_major(input.as_ptr(), self.inputs),
                        Operand::row_major(transposed.as_ptr(), self.outputs),
                        parallelism,
                    );
                }
                each_row_in_parallel(out, self.outputs, |_, values| around.finish(values));
            }
            Values::F32(packed) => {
                let k = self.inputs;
                let panel_stride = k * PANEL;
                self.for_each_tile(
                    kernel.f32_blocking(k),
                    rows,
                    out,
                    around,
                    k,
                    |steps, panel, strip, c, ldc| {
                        let weights = &packed[panel * panel_stride + steps.start * PANEL..];
                        let a = &input[strip.start * k + steps.start..];
                        // SAFETY: `a` holds the strip's rows of k values from
                        // `steps.start`, `weights` the tile's panels' steps, `c`
                        // the tile.
                        unsafe {
                            kernel.f32_tile(
                                strip.len(),
                                steps.len(),
                                a,
                                k,
                                weights,
                                panel_stride,
                                c,
                                ldc,
                            )
                        }
                    },
                );
            }
            #[cfg(target_arch = "x86_64")]
            Values::Bf16(packed) if kernel == Kernel::Amx => {
                let pairs = bf16_pairs(self.inputs);
                let (activation_bytes, panel_bytes) = (4 * pairs, 4 * pairs * PANEL);
                let block_rows = 2 * amx::TILE_ROWS;
                let convert = |rows: Range<usize>, spread| {
                    let rows = &input[rows.start * self.inputs..rows.end * self.inputs];
                    bf16_rows(kernel, rows, self.inputs, spread)
                };
                self.for_each_amx_block(
                    rows,
                    out,
                    around,
                    block_rows,
                    convert,
                    |activations, strip, panel, columns, c| {
                        let tile_rows = |i: usize| {
                            strip
                                .len()
                                .saturating_sub(i * amx::TILE_ROWS)
                                .min(amx::TILE_ROWS) as u8
                        };
                        // SAFETY: AMX was granted (the kernel's detection); the
                        // strip's rows hold `pairs` pairs each, the panels
                        // `pairs` pairs of 16 columns, and `c` is this task's
                        // block of the output.
                        unsafe {
                            amx::bf16_block(
                                [tile_rows(0), tile_rows(1)],
                                columns,
                                pairs / AMX_STEP_PAIRS,
                                amx::Strided {
                                    at: activations.as_ptr().add(strip.start * 2 * pairs).cast(),
                                    stride: activation_bytes,
                                },
                                amx::Strided {
                                    at: packed.as_ptr().add(panel * 2 * pairs * PANEL).cast(),
                                    stride: panel_bytes,
                                },
                                amx::Strided {
                                    at: c.cast(),
                                    stride: 4 * self.outputs,
                                },
                                amx::Start::Output,
                            )
                        }
                    },
                );
            }
            #[cfg(target_arch = "x86_64")]
            Values::Int8Quads { values, scales } => {
                debug_assert_eq!(kernel, Kernel::Amx);
                let groups = self.inputs.div_ceil(2 * GROUP_PAIRS);
                let padded = groups * 2 * GROUP_PAIRS;
                let panel_bytes = int8_quads(self.inputs) * 4 * PANEL;
                let convert = |rows: Range<usize>, spread| {
                    let rows = &input[rows.start * self.inputs..rows.end * self.inputs];
                    quantise_rows_in_bytes(rows, self.inputs, padded, spread)
                };
                self.for_each_amx_block(
                    rows,
                    out,
                    around,
                    amx::TILE_ROWS,
                    convert,
                    |(bytes, row_scales), strip, panel, columns, c| {
                        // SAFETY: AMX was granted and AVX-512F detected (the
                        // kernel's detection); the strip's rows hold `groups`
                        // groups each, the panels and their scales as many, and
                        // `c` is this task's block of the output.
                        unsafe {
                            amx::int8_block(
                                strip.len() as u8,
                                columns,
                                groups,
                                amx::SplitRows {
                                    high: bytes.as_ptr().add(strip.start * 2 * padded).cast(),
                                    low: bytes.as_ptr().add((2 * strip.start + 1) * padded),
                                    stride: 2 * padded,
                                    scales: row_scales.as_ptr().add(strip.start),
                                },
                                amx::Strided {
                                    at: values.as_ptr().add(panel * panel_bytes),
                                    stride: panel_bytes,
                                },
                                amx::Strided {
                                    at: scales.as_ptr().add(panel * groups * PANEL),
                                    stride: groups * PANEL,
                                },
                                amx::Strided {
                                    at: c,
                                    stride: 4 * self.outputs,
                                },
                            )
                        }
                    },
                );
            }
            Values::Bf16(packed) => {
                let pairs = self.inputs.div_ceil(2);
                let lda = 2 * bf16_pairs(self.inputs);
                let panel_stride = lda * PANEL;
                let tile_panels = kernel.tile_panels(WeightPrecision::Bf16);
                let activations = bf16_rows(kernel, input, self.inputs, Spread::Threads);
                self.for_each_tile(
                    Blocking::one_tile(tile_panels, BF16_BLOCK_PAIRS / tile_panels),
                    rows,
                    out,
                    around,
                    pairs,
                    |steps, panel, strip, c, ldc| {
                        let weights = &packed[panel * panel_stride + steps.start * 2 * PANEL..];
                        let a = &activations[strip.start * lda + 2 * steps.start..];
                        // SAFETY: as for f32, in input pairs.
                        unsafe {
                            kernel.bf16_tile(
                                strip.len(),
                                steps.len(),
                                a,
                                lda,
                                weights,
                                panel_stride,
                                c,
                                ldc,
                            )
                        }
                    },
                );
            }
            Values::Int8 { values, scales } => {
                let pairs = self.inputs.div_ceil(2);
                let groups = pairs.div_ceil(GROUP_PAIRS);
                let strides = PanelStrides {
                    weights: pairs * 2 * PANEL,
                    scales: groups * PANEL,
                };
                let (quantised, row_scales) =
                    quantise_rows(input, self.inputs, 2 * pairs, Spread::Threads);
                self.for_each_tile(
                    Blocking::one_tile(kernel.tile_panels(WeightPrecision::Int8), INT8_BLOCK_PAIRS),
                    rows,
                    out,
                    around,
                    pairs,
                    |steps, panel, strip, c, ldc| {
                        let weights = &values[panel * strides.weights + steps.start * 2 * PANEL..];
                        let first_group = panel * groups + steps.start / GROUP_PAIRS;
                        let a = &quantised[strip.start * 2 * pairs + 2 * steps.start..];
                        // SAFETY: as for f32, in input pairs.
                        unsafe {
                            kernel.int8_tile(
                                steps.len(),
                                a,
                                2 * pairs,
                                weights,
                                &row_scales[strip],
                                &scales[first_group * PANEL..],
                                strides,
                                c,
                                ldc,
                            )
                        }
                    },
                );
            }
        }
    }

    /// Runs `tile(steps, panel, strip, c, ldc)` on every register tile of
    /// the output (a strip of rows × `blocking.tile_panels` panels from
    /// `panel`, `c` its first value and `ldc` its row stride) for each
    /// block of `blocking.steps` input steps out of `steps`, in the order
    /// that keeps a block's chunk of panels in cache while the strips of a
    /// task's rows pass, each strip running across the whole chunk.
    /// `around` starts each task's rows before and finishes them after, while
    /// they are in the task's cache.
    fn for_each_tile(
        &self,
        blocking: Blocking,
        rows: usize,
        out: &mut [f32],
        around: &impl OutputRows,
        steps: usize,
        tile: impl Fn(Range<usize>, usize, Range<usize>, *mut f32, usize) + Sync,
    ) {
        let tile_panels = blocking.tile_panels;
        let task = (blocking.task_rows, 1);
        self.for_each_task(tile_panels, rows, out, around, task, |rows, panels, out| {
            for steps in blocks(steps, blocking.steps) {
                for chunk in blocks(panels.len(), blocking.chunk_panels) {
                    let chunk = panels.start + chunk.start..panels.start + chunk.end;
                    for_each_strip(rows.clone(), |strip| {
                        for panel in chunk.clone().step_by(tile_panels) {
                            out.tile(tile_panels, strip.clone(), panel, self.outputs, |c, ldc| {
                                tile(steps.clone(), panel, strip.clone(), c, ldc)
                            });
                        }
                    });
                }
            }
        });
    }

    /// Runs `block(converted, rows, panel, columns, c)` on every AMX block
    /// of the output: `block_rows` rows (fewer at the end) × the two panels
    /// from `panel`, `columns` holding how many output columns each has (0
    /// past the last) and `c` the block's first value. Every block sums
    /// over all the inputs at once: ranges of 256 inputs (activations and
    /// weights in L1, the sums back to the output between ranges) measured
    /// 10 % slower at 4,096 rows. `converted` holds
    /// the activations as `convert(rows)` made them for the tiles, `rows`
    /// counted from its first: each task converts its own rows on its
    /// thread, into that core's cache, unless the batch is so short that
    /// tasks share rows. In each task panel pairs run outermost, so a
    /// pair's weights stay in cache while the task's rows pass; `around` as
    /// in [`PackedMatrix::for_each_tile`].
    #[cfg(target_arch = "x86_64")]
    fn for_each_amx_block<T: Sync>(
        &self,
        rows: usize,
        out: &mut [f32],
        around: &impl OutputRows,
        block_rows: usize,
        convert: impl Fn(Range<usize>, Spread) -> T + Sync,
        block: impl Fn(&T, Range<usize>, usize, [u8; 2], *mut f32) + Sync,
    ) {
        // A short batch's rows are shared by several tasks (its panels are
        // split), so they are converted once, across the threads.
        let shared = threads_for(rows * self.outputs * self.inputs)
            .is_some_and(|threads| rows.div_ceil(ROW_BLOCK) < 3 * threads);
        let whole = shared.then(|| convert(0..rows, Spread::Threads));
        let panel_columns = |panel: usize, panels: &Range<usize>| {
            let first = panel * PANEL;
            if panel < panels.end && first < self.outputs {
                (self.outputs - first).min(PANEL) as u8
            } else {
                0
            }
        };
        self.for_each_task(
            AMX_TILE_PANELS,
            rows,
            out,
            around,
            (ROW_BLOCK, block_rows),
            |rows, panels, out| {
                let own;
                let (converted, first_row) = match &whole {
                    Some(whole) => (whole, 0),
                    None => {
                        own = convert(rows.clone(), Spread::No);
                        (&own, rows.start)
                    }
                };
                for panel in panels.clone().step_by(AMX_TILE_PANELS) {
                    let widths = [
                        panel_columns(panel, &panels),
                        panel_columns(panel + 1, &panels),
                    ];
                    for first in rows.clone().step_by(block_rows) {
                        let end = (first + block_rows).min(rows.end);
                        let c = out.out.at(first * self.outputs + panel * PANEL);
                        let strip = first - first_row..end - first_row;
                        block(converted, strip, panel, widths, c);
                    }
                }
            },
        );
    }

    /// Splits the output into (row block × panel range) tasks, on rayon's
    /// threads when the multiply is big enough to pay for them, and runs
    /// `task(rows, panels, out)` on each between `around`'s start and
    /// finish of its rows. Panel ranges start on multiples of
    /// `tile_panels`; row blocks hold up to about `task_rows` rows and start
    /// on multiples of `row_unit` (AMX's tiles of rows).
    fn for_each_task(
        &self,
        tile_panels: usize,
        rows: usize,
        out: &mut [f32],
        around: &impl OutputRows,
        (task_rows, row_unit): (usize, usize),
        task: impl Fn(Range<usize>, Range<usize>, &OutputTiles) + Sync,
    ) {
        let panels = self.outputs.div_ceil(PANEL);
        let threads = threads_for(rows * self.outputs * self.inputs);
        let units = rows.div_ceil(row_unit);
        // Where there are blocks enough, as many on every thread, the rows
        // shared out evenly: 57 blocks of up to 72 rows on 2 threads would
        // leave one thread a whole block's work alone at the end.
        let row_blocks = match (units.div_ceil(task_rows.div_ceil(row_unit)), threads) {
            (blocks, Some(threads)) if blocks >= threads => blocks.next_multiple_of(threads),
            (blocks, _) => blocks,
        };
        // A short batch has too few row blocks to feed every thread; its
        // panels are split as well.
        let panel_chunks = match threads {
            Some(threads) => (3 * threads)
                .div_ceil(row_blocks.max(1))
                .clamp(1, panels.max(1)),
            None => 1,
        };
        // Whole tiles: a chunk starts on a tile's first panel.
        let panels_per_chunk = panels.div_ceil(panel_chunks).next_multiple_of(tile_panels);
        let tiles = OutputTiles {
            out: DisjointWrites::new(out),
            rows,
        };
        let run = |t: usize| {
            let (block, chunk) = (t / panel_chunks, t % panel_chunks);
            let row_at = |block: usize| (block * units / row_blocks * row_unit).min(rows);
            let rows = row_at(block)..row_at(block + 1);
            let panels = chunk * panels_per_chunk..((chunk + 1) * panels_per_chunk).min(panels);
            if panels.is_empty() || rows.is_empty() {
                return;
            }
            let columns = panels.start * PANEL..(panels.end * PANEL).min(self.outputs);
            tiles.each_row(
                rows.clone(),
                columns.clone(),
                self.outputs,
                |row, values| around.start(row, columns.start, values),
            );
            task(rows.clone(), panels, &tiles);
            tiles.each_row(rows, columns, self.outputs, |_, values| {
                around.finish(values)
            });
        };
        let tasks = row_blocks * panel_chunks;
        if threads.is_some() {
            (0..tasks).into_par_iter().for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    }
}

/// What a multiply does to each output row around its sums, on the thread
/// that computes the row's block while the block is in that core's cache:
/// no separate pass over the whole output before or after.
pub trait OutputRows: Sync {
    /// Writes the values the products of `row` are added onto, in its
    /// columns from `first_column` on (`values` holds as many as the block
    /// spans).
    fn start(&self, row: usize, first_column: usize, values: &mut [f32]);

    /// Maps the finished sums of a block of one row.
    fn finish(&self, values: &mut [f32]);
}

/// Adds the products onto what the output holds.
struct KeepOutput;

impl OutputRows for KeepOutput {
    fn start(&self, _: usize, _: usize, _: &mut [f32]) {}

    fn finish(&self, _: &mut [f32]) {}
}

/// Runs `visit(row, values)` on every row of `out` (rows of `outputs`), in
/// parallel blocks of rows.
pub(crate) fn each_row_in_parallel(
    out: &mut [f32],
    outputs: usize,
    visit: impl Fn(usize, &mut [f32]) + Sync,
) {
    // Enough work to pay for a task, few enough rows to spread a short batch
    // over the threads.
    const ROWS_PER_TASK: usize = 16;
    if outputs == 0 {
        return;
    }
    out.par_chunks_mut(outputs * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(block, rows)| {
            for (r, values) in rows.chunks_exact_mut(outputs).enumerate() {
                visit(block * ROWS_PER_TASK + r, values);
            }
        });
}

/// A matrix operand for gemm: where its first value is and how far apart
/// its rows and columns lie.
#[derive(Clone, Copy)]
pub(crate) struct Operand<P> {
    at: P,
    row_stride: isize,
    column_stride: isize,
}

impl<P> Operand<P> {
    /// Rows `row_length` values apart, columns adjacent.
    pub(crate) fn row_major(at: P, row_length: usize) -> Self {
        Operand {
            at,
            row_stride: row_length as isize,
            column_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with rows `row_length` apart.
    pub(crate) fn column_major(at: P, row_length: usize) -> Self {
        Operand {
            at,
            row_stride: 1,
            column_stride: row_length as isize,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accumulate {
    /// `dst = lhs·rhs`
    No,
    /// `dst += lhs·rhs`
    Yes,
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, or `+=` when accumulating.
///
/// # Safety
/// Each operand must address valid f32s at every (row, column) of its
/// shape, and `dst` must not overlap the inputs or be written by anyone
/// else during the call.
pub(crate) unsafe fn multiply(
    (m, n, k): (usize, usize, usize),
    dst: Operand<*mut f32>,
    accumulate: Accumulate,
    lhs: Operand<*const f32>,
    rhs: Operand<*const f32>,
    parallelism: Parallelism,
) {
    // SAFETY: passed on from the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.at,
            dst.column_stride,
            dst.row_stride,
            accumulate == Accumulate::Yes,
            lhs.at,
            lhs.column_stride,
            lhs.row_stride,
            rhs.at,
            rhs.column_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// How far apart consecutive panels of int8 weights and of their scales
/// lie, for the micro-kernels that take two panels at once.
#[derive(Clone, Copy)]
struct PanelStrides {
    weights: usize,
    scales: usize,
}

/// Where weight `input` of `column` lies in a panel stored by input pairs
/// (`[pair][column][2]`, bf16's and int8's layout).
fn pair_slot(input: usize, column: usize) -> usize {
    (input / 2) * 2 * PANEL + column * 2 + input % 2
}

/// Where weight `input` of `column` lies in a panel stored by input quads
/// (`[quad][column][4]`, int8's layout for AMX).
fn quad_slot(input: usize, column: usize) -> usize {
    (input / 4) * 4 * PANEL + column * 4 + input % 4
}

/// Input pairs a bf16 panel stores: whole AMX steps, zero-padded, so the
/// tiles never read past a panel; the vector kernels stop at the real
/// pairs.
fn bf16_pairs(inputs: usize) -> usize {
    inputs.div_ceil(2).next_multiple_of(AMX_STEP_PAIRS)
}

/// Input quads an int8 panel stores for AMX: whole quantisation groups.
fn int8_quads(inputs: usize) -> usize {
    inputs.div_ceil(2 * GROUP_PAIRS) * GROUP_PAIRS / 2
}

/// Each column of `weight` (`outputs × inputs`) quantised symmetrically to
/// ±127 per group of `2 · GROUP_PAIRS` inputs; weight `input` of a column
/// lands at `slot(column, input)`. Returns the values and the scales,
/// `[panel][group][column]`, zero for an all-zero group and for the last
/// panel's padding, NaN for a group holding NaN or an infinity.
fn quantise_weights(
    weight: &[f32],
    inputs: usize,
    panels: usize,
    slot: impl Fn(usize, usize) -> usize,
) -> (Lines<i8>, Vec<f32>) {
    let group_inputs = 2 * GROUP_PAIRS;
    let groups = inputs.div_ceil(group_inputs);
    let mut packed = zeroed_lines(slot(panels * PANEL, 0), 0);
    let mut scales = vec![0.0; panels * groups * PANEL];
    for (o, row) in weight.chunks_exact(inputs).enumerate() {
        let (panel, column) = (o / PANEL, o % PANEL);
        for (group, part) in row.chunks(group_inputs).enumerate() {
            let scale = &mut scales[(panel * groups + group) * PANEL + column];
            let largest = largest_magnitude(part);
            if !largest.is_finite() {
                // The column's outputs become NaN, as in f32.
                *scale = f32::NAN;
                continue;
            }
            if largest == 0.0 {
                continue;
            }
            *scale = largest / INT8_MAX;
            let first = group * group_inputs;
            for (i, w) in (first..).zip(part) {
                let q = (w * (INT8_MAX / largest)).round();
                packed[slot(o, i)] = q.clamp(-INT8_MAX, INT8_MAX) as i8;
            }
        }
    }
    (packed, scales)
}

/// Panels stored for `outputs` columns: whole, and whole widest tiles, so
/// no tile reads past the weights (the padding is zeros).
fn stored_panels(outputs: usize) -> usize {
    outputs.div_ceil(PANEL).next_multiple_of(MAX_TILE_PANELS)
}

/// The current pool's thread count, when a multiply of `work` multiply-adds
/// is worth splitting over it.
fn threads_for(work: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    (threads > 1 && work >= PARALLEL_WORK).then_some(threads)
}

/// The largest magnitude among `values`, or NaN where one is NaN (it
/// sticks once met, which `f32::max` would drop).
fn largest_magnitude(values: &[f32]) -> f32 {
    vector_math::reduce(values, 0.0, |m, v| {
        let v = v.abs();
        if v > m || v.is_nan() { v } else { m }
    })
}

/// `0..len` in consecutive ranges of at most `size`.
fn blocks(len: usize, size: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    (0..len)
        .step_by(size)
        .map(move |start| start..(start + size).min(len))
}

/// Cuts `rows` into as few strips of at most [`STRIP`] rows as it takes,
/// evenly: 20 rows run as 5+5+5+5 rather than 6+6+6+2, whose last strip
/// would keep too few sums in flight to hide the multiply-add latency.
fn for_each_strip(rows: Range<usize>, mut visit: impl FnMut(Range<usize>)) {
    let strips = rows.len().div_ceil(STRIP);
    let mut start = rows.start;
    for strip in 0..strips {
        let len = (rows.end - start).div_ceil(strips - strip);
        visit(start..start + len);
        start += len;
    }
}

/// Each row scaled to ±32767 and rounded into i16, padded with zero
/// inputs to `padded` values; returns the values and each row's scale back
/// to f32 (NaN for a row holding NaN or an infinity).
fn quantise_rows(
    input: &[f32],
    inputs: usize,
    padded: usize,
    spread: Spread,
) -> (Vec<i16>, Vec<f32>) {
    convert_rows(input, inputs, padded, spread, 0, |row, quantised| {
        quantise_row(row, |factor| {
            vector_math::map_into(row, quantised, |v| {
                vector_math::round_small(v * factor) as i16
            })
        })
    })
}

/// As [`quantise_rows`], each 16-bit value x split into the high (signed)
/// and low (unsigned) bytes that AMX multiplies apart (x = 256·high + low,
/// exactly), written straight from the f32 row: a row is `2 · padded`
/// bytes, its high bytes then its low ones.
#[cfg(target_arch = "x86_64")]
fn quantise_rows_in_bytes(
    input: &[f32],
    inputs: usize,
    padded: usize,
    spread: Spread,
) -> (Vec<u8>, Vec<f32>) {
    convert_rows(input, inputs, 2 * padded, spread, 0, |row, bytes| {
        let (high, low) = bytes.split_at_mut(padded);
        quantise_row(row, |factor| {
            let quantised = move |v: f32| vector_math::round_small(v * factor) as i16;
            vector_math::map_into(row, high, move |v| (quantised(v) >> 8) as u8);
            vector_math::map_into(row, low, move |v| quantised(v) as u8);
        })
    })
}

/// Runs `quantise(factor)` with the factor that takes `row` to ±32767 and
/// returns the scale back to f32; a row of zeros keeps its zeros and scale
/// 0, one holding NaN or an infinity gets scale NaN (its outputs become
/// NaN, as they would in f32).
fn quantise_row(row: &[f32], quantise: impl FnOnce(f32)) -> f32 {
    let largest = largest_magnitude(row);
    if !largest.is_finite() {
        return f32::NAN;
    }
    if largest == 0.0 {
        return 0.0;
    }
    quantise(ACTIVATION_MAX / largest);
    largest / ACTIVATION_MAX
}

/// Whether a conversion of activations may spread over rayon's threads
/// (a whole input), or stays on the calling one (a task's own rows, which
/// it converts into its core's cache).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    Threads,
    No,
}

/// Each row rounded to bfloat16 (to nearest, ties to even), padded with
/// zero inputs to the pairs a bf16 panel stores, as the bf16 kernels read
/// input pairs.
fn bf16_rows(kernel: Kernel, input: &[f32], inputs: usize, spread: Spread) -> Vec<bf16> {
    let padded = 2 * bf16_pairs(inputs);
    let (rounded, _) =
        convert_rows(
            input,
            inputs,
            padded,
            spread,
            bf16::ZERO,
            |row, rounded| match kernel {
                // SAFETY: AVX-512 BF16 was detected (`Kernel::for_precision`).
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 | Kernel::Amx => unsafe {
                    avx512::round_to_bf16(row, &mut rounded[..row.len()])
                },
                // half's scalar loop: small beside the portable tile's multiply.
                _ => rounded[..row.len()].convert_from_f32_slice(row),
            },
        );
    rounded
}

/// Converts each row of `input` (`inputs` values) by `convert(row, out)`
/// into a row `out` of `padded` values of `T`, all `zero` before: the
/// input pairs or steps the bf16 and int8 kernels read. Returns the rows
/// and what each conversion returned. With `Spread::Threads`, across rayon's threads for
/// a big input only: rayon's hand-off costs more than a short batch's few
/// rows take.
fn convert_rows<T: Copy + Send + Sync, R: Send>(
    input: &[f32],
    inputs: usize,
    padded: usize,
    spread: Spread,
    zero: T,
    convert: impl Fn(&[f32], &mut [T]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let mut converted = vec![zero; input.len() / inputs * padded];
    let row = |(out, row): (&mut [T], &[f32])| convert(row, out);
    let results = if spread == Spread::No || input.len() < PARALLEL_WORK / 4 {
        converted
            .chunks_mut(padded)
            .zip(input.chunks(inputs))
            .map(row)
            .collect()
    } else {
        converted
            .par_chunks_mut(padded)
            .zip(input.par_chunks(inputs))
            .map(row)
            .collect()
    };
    (converted, results)
}

/// The output matrix, written by many tasks at once, each in its own
/// (row block × panel range) region.
struct OutputTiles {
    out: DisjointWrites,
    rows: usize,
}

impl OutputTiles {
    /// Runs `visit(row, values)` on `columns` of each of `rows` (the output
    /// being rows of `outputs`): a region that only the calling task
    /// touches.
    fn each_row(
        &self,
        rows: Range<usize>,
        columns: Range<usize>,
        outputs: usize,
        mut visit: impl FnMut(usize, &mut [f32]),
    ) {
        debug_assert!(rows.end <= self.rows && columns.end <= outputs);
        for row in rows {
            // SAFETY: the row's columns lie inside the output, and this task
            // alone reads or writes them while it runs (see `for_each_task`).
            let values = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.at(row * outputs + columns.start),
                    columns.len(),
                )
            };
            visit(row, values);
        }
    }

    /// Runs `run(c, ldc)` on the output tile of `strip` × `tile_panels`
    /// panels from `panel`: in place when they are whole, through a full-width copy
    /// at the last, partial one (the micro-kernels always write whole
    /// panels).
    fn tile(
        &self,
        tile_panels: usize,
        strip: Range<usize>,
        panel: usize,
        outputs: usize,
        run: impl FnOnce(*mut f32, usize),
    ) {
        debug_assert!(strip.end <= self.rows);
        let first = panel * PANEL;
        let width = tile_panels * PANEL;
        let columns = (outputs - first).min(width);
        let at = self.out.at(strip.start * outputs + first);
        if columns == width {
            run(at, outputs);
            return;
        }
        let mut scratch = [0.0f32; STRIP * MAX_TILE_PANELS * PANEL];
        for r in 0..strip.len() {
            // SAFETY: row `strip.start + r` of the output has `columns`
            // values from `first`; this task alone writes them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    at.add(r * outputs),
                    scratch[r * width..].as_mut_ptr(),
                    columns,
                )
            };
        }
        run(scratch.as_mut_ptr(), width);
        for r in 0..strip.len() {
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    scratch[r * width..].as_ptr(),
                    at.add(r * outputs),
                    columns,
                )
            };
        }
    }
}

/// How [`PackedMatrix::for_each_tile`] walks the output: tasks of up to
/// about `task_rows` rows, register tiles of `tile_panels` panels, sums
/// over blocks of `steps` input steps, and chunks of `chunk_panels` panels
/// (whole tiles) whose weights stay in cache while every strip of a task's
/// rows runs across them.
#[derive(Clone, Copy, Debug)]
struct Blocking {
    tile_panels: usize,
    steps: usize,
    chunk_panels: usize,
    task_rows: usize,
}

impl Blocking {
    /// One tile's panels a chunk: the block's weights (sized for L1) stay
    /// there while the strips pass.
    fn one_tile(tile_panels: usize, steps: usize) -> Self {
        Blocking {
            tile_panels,
            steps,
            chunk_panels: tile_panels,
            task_rows: ROW_BLOCK,
        }
    }
}

/// How f32 weights are laid out: for pulse's tile, or for the gemm crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Layout {
    Panels,
    Transposed,
}

impl F32Layout {
    /// Panels for pulse's tiles, except on CPUs with AVX-512 that lack the
    /// extensions pulse's AVX-512 kernels need: there gemm's 512-bit
    /// kernels outrun the AVX2 tile.
    pub fn for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && !Kernel::detect().has_avx512_tiles() {
            return F32Layout::Transposed;
        }
        F32Layout::Panels
    }
}

/// Whether this CPU runs bf16 weights at full speed (AVX-512 BF16 with the
/// rest of pulse's AVX-512 kernels); elsewhere they run on a slow portable
/// tile, fit for tests only.
pub fn bf16_runs_fast() -> bool {
    Kernel::detect().has_bf16()
}

/// Whether this CPU runs AMX tiles (with the AVX-512 around them).
pub(crate) fn amx_runs() -> bool {
    Kernel::detect().is_amx()
}

/// The instructions the dense layers of `precision` run on, on this CPU:
/// `AMX`, `AVX-512`, `AVX-512 (gemm)`, `AVX2` or `portable`.
pub fn kernel_path(precision: WeightPrecision) -> &'static str {
    match (Kernel::detect().for_precision(precision), precision) {
        #[cfg(target_arch = "x86_64")]
        (Kernel::Amx, WeightPrecision::Bf16 | WeightPrecision::Int8) => "AMX",
        #[cfg(target_arch = "x86_64")]
        (Kernel::Amx | Kernel::Avx512, _) => "AVX-512",
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, WeightPrecision::F32)
            if F32Layout::for_this_cpu() == F32Layout::Transposed =>
        {
            "AVX-512 (gemm)"
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, WeightPrecision::F32 | WeightPrecision::Int8) => "AVX2",
        _ => "portable",
    }
}

/// The instruction set of the micro-kernels this CPU runs, for reports.
pub fn micro_kernels() -> &'static str {
    match Kernel::detect() {
        Kernel::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => "AVX2 and FMA",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if Kernel::Avx512.has_bf16() => "AVX-512 with VNNI and BF16",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => "AVX-512 with VNNI",
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => "AMX (BF16, INT8) beside AVX-512 with VNNI and BF16",
    }
}

/// Calls a micro-kernel `module::name::<ROWS>(args)` with the strip's row
/// count (1 to [`STRIP`]) as its constant.
#[cfg(target_arch = "x86_64")]
macro_rules! with_rows {
    ($rows:expr, $module:ident :: $kernel:ident ( $($arg:expr),* $(,)? )) => {
        match $rows {
            1 => $module::$kernel::<1>($($arg),*),
            2 => $module::$kernel::<2>($($arg),*),
            3 => $module::$kernel::<3>($($arg),*),
            4 => $module::$kernel::<4>($($arg),*),
            5 => $module::$kernel::<5>($($arg),*),
            _ => $module::$kernel::<STRIP>($($arg),*),
        }
    };
}

/// Which micro-kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 with BW and VNNI (Cascade Lake, Ice Lake, Zen 4 and later):
    /// f32 tiles four panels wide, bf16 and int8 two; bf16 where AVX-512 BF16 is there too
    /// (Zen 4, Sapphire Rapids and later), on the portable tile elsewhere.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `Avx512`, with bf16 and int8 on AMX tiles (Sapphire Rapids and
    /// later, where Linux grants the tile state).
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return if has!("avx512bf16") && amx::granted() {
                    Kernel::Amx
                } else {
                    Kernel::Avx512
                };
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Whether pulse's AVX-512 micro-kernels run (AMX's CPUs run them for
    /// f32 and around the tiles).
    fn has_avx512_tiles(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self, Kernel::Avx512 | Kernel::Amx) {
            return true;
        }
        false
    }

    /// How the f32 multiply walks a matrix of `inputs` inputs (see
    /// [`PackedMatrix::for_each_tile`]).
    fn f32_blocking(self, inputs: usize) -> Blocking {
        let tile_panels = self.tile_panels(WeightPrecision::F32);
        if tile_panels < F32_TILE_PANELS {
            return Blocking::one_tile(tile_panels, F32_BLOCK);
        }
        // As many inputs as F32_WIDE_BLOCK allows, in blocks of one size.
        let steps = inputs
            .div_ceil(inputs.div_ceil(F32_WIDE_BLOCK).max(1))
            .max(1);
        let chunk = F32_CHUNK_BYTES / (steps * PANEL * size_of::<f32>());
        Blocking {
            tile_panels,
            steps,
            chunk_panels: (chunk / tile_panels).max(1) * tile_panels,
            task_rows: F32_WIDE_TASK_ROWS,
        }
    }

    /// Panels side by side in one register tile of `precision`.
    fn tile_panels(self, precision: WeightPrecision) -> usize {
        match precision {
            WeightPrecision::F32 if self.has_avx512_tiles() => F32_TILE_PANELS,
            _ if self.has_avx512_tiles() => 2,
            _ => 1,
        }
    }

    /// The kernels that run `precision` on this CPU: bf16 falls back to
    /// the portable tile where `vdpbf16ps` is missing, so the bf16 paths
    /// below need not ask again.
    fn for_precision(self, precision: WeightPrecision) -> Self {
        if precision == WeightPrecision::Bf16 && !self.has_bf16() {
            Kernel::Portable
        } else {
            self
        }
    }

    /// Whether the bf16 micro-kernels run on `vdpbf16ps` (AVX-512 BF16,
    /// which every AMX CPU has) rather than on the portable tile.
    fn has_bf16(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Kernel::Amx => return true,
            Kernel::Avx512 => return std::arch::is_x86_feature_detected!("avx512bf16"),
            _ => {}
        }
        false
    }

    /// Whether int8 weights are packed in quads for AMX.
    fn is_amx(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Amx {
            return true;
        }
        false
    }

    /// `c[r][PANEL·q + j] += Σ_s a[r·lda + s] · b[q·panel_stride + s·PANEL + j]`
    /// for r < rows ≤ STRIP, s < steps, j < PANEL and each of the tile's
    /// panels q; `c` rows are `ldc` apart.
    ///
    /// # Safety
    /// `a`, `b` and `c` must hold every value so addressed.
    #[allow(clippy::too_many_arguments)]
    unsafe fn f32_tile(
        self,
        rows: usize,
        steps: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        panel_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        debug_assert!(a.len() >= (rows - 1) * lda + steps);
        debug_assert!(
            b.len() >= (self.tile_panels(WeightPrecision::F32) - 1) * panel_stride + steps * PANEL
        );
        #[cfg(target_arch = "x86_64")]
        let (a_at, b_at) = (a.as_ptr(), b.as_ptr());
        match self {
            Kernel::Portable => unsafe { portable::f32_tile(rows, steps, a, lda, b, c, ldc) },
            // SAFETY: the kernels' features were detected; the bounds are
            // the caller's.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                with_rows!(rows, avx2::f32_tile(steps, a_at, lda, b_at, c, ldc))
            },
            #[cfg(target_arch = "x86_64")]
            // AMX runs its tiles elsewhere; these are its vector kernels.
            Kernel::Avx512 | Kernel::Amx => unsafe {
                with_rows!(
                    rows,
                    avx512::f32_tile(steps, a_at, lda, b_at, panel_stride, c, ldc)
                )
            },
        }
    }

    /// As [`Kernel::f32_tile`] over input pairs: `a` and `b` hold bfloat16,
    /// `b` a pair's two inputs side by side for each column.
    ///
    /// # Safety
    /// As [`Kernel::f32_tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn bf16_tile(
        self,
        rows: usize,
        pairs: usize,
        a: &[bf16],
        lda: usize,
        b: &[bf16],
        panel_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        debug_assert!(a.len() >= (rows - 1) * lda + 2 * pairs);
        debug_assert!(
            b.len()
                >= (self.tile_panels(WeightPrecision::Bf16) - 1) * panel_stride + pairs * 2 * PANEL
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // AMX runs its tiles elsewhere; these are its vector kernels.
            Kernel::Avx512 | Kernel::Amx => unsafe {
                let (a, b) = (a.as_ptr().cast::<u16>(), b.as_ptr().cast::<u16>());
                with_rows!(
                    rows,
                    avx512::bf16_tile(pairs, a, lda, b, panel_stride, c, ldc)
                )
            },
            _ => unsafe { portable::bf16_tile(rows, pairs, a, lda, b, c, ldc) },
        }
    }

    /// `c[r][PANEL·q + j] += Σ_g row_scales[r] · column_scales[q·strides.scales + g·PANEL + j] · Σ_{p ∈ g} Σ_t a[r·lda + 2p + t] · b[q·strides.weights + (p·PANEL + j)·2 + t]`
    /// for r < row_scales.len() ≤ STRIP, groups g of GROUP_PAIRS pairs
    /// p < pairs, t < 2, j < PANEL and each of the tile's panels q.
    ///
    /// # Safety
    /// As [`Kernel::f32_tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn int8_tile(
        self,
        pairs: usize,
        a: &[i16],
        lda: usize,
        b: &[i8],
        row_scales: &[f32],
        column_scales: &[f32],
        strides: PanelStrides,
        c: *mut f32,
        ldc: usize,
    ) {
        let rows = row_scales.len();
        let panels = self.tile_panels(WeightPrecision::Int8);
        let last_panel = (panels - 1) * strides.weights;
        debug_assert!(a.len() >= (rows - 1) * lda + 2 * pairs);
        debug_assert!(b.len() >= last_panel + pairs * 2 * PANEL);
        debug_assert!(
            column_scales.len()
                >= (panels - 1) * strides.scales + pairs.div_ceil(GROUP_PAIRS) * PANEL
        );
        #[cfg(target_arch = "x86_64")]
        let (a_at, b_at, s, cs) = (
            a.as_ptr(),
            b.as_ptr(),
            row_scales.as_ptr(),
            column_scales.as_ptr(),
        );
        match self {
            Kernel::Portable => unsafe {
                portable::int8_tile(pairs, a, lda, b, row_scales, column_scales, c, ldc)
            },
            // SAFETY: the kernels' features were detected; the bounds are
            // the caller's.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                with_rows!(rows, avx2::int8_tile(pairs, a_at, lda, b_at, s, cs, c, ldc))
            },
            #[cfg(target_arch = "x86_64")]
            // AMX runs its tiles elsewhere; these are its vector kernels.
            Kernel::Avx512 | Kernel::Amx => unsafe {
                with_rows!(
                    rows,
                    avx512::int8_tile(pairs, a_at, lda, b_at, s, cs, strides, c, ldc)
                )
            },
        }
    }
}

mod portable {
    use super::{GROUP_PAIRS, PANEL};
    use half::bf16;

    /// # Safety
    /// `c` holds `rows` rows of PANEL values, `ldc` apart.
    pub(super) unsafe fn f32_tile(
        rows: usize,
        steps: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        c: *mut f32,
        ldc: usize,
    ) {
        for r in 0..rows {
            let mut sums = [0.0f32; PANEL];
            // SAFETY: the caller's promise.
            unsafe { std::ptr::copy_nonoverlapping(c.add(r * ldc), sums.as_mut_ptr(), PANEL) };
            for (s, x) in a[r * lda..r * lda + steps].iter().enumerate() {
                for (sum, w) in sums.iter_mut().zip(&b[s * PANEL..(s + 1) * PANEL]) {
                    *sum = x.mul_add(*w, *sum);
                }
            }
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(sums.as_ptr(), c.add(r * ldc), PANEL) };
        }
    }

    /// # Safety
    /// As [`f32_tile`].
    pub(super) unsafe fn bf16_tile(
        rows: usize,
        pairs: usize,
        a: &[bf16],
        lda: usize,
        b: &[bf16],
        c: *mut f32,
        ldc: usize,
    ) {
        for r in 0..rows {
            let mut sums = [0.0f32; PANEL];
            // SAFETY: the caller's promise.
            unsafe { std::ptr::copy_nonoverlapping(c.add(r * ldc), sums.as_mut_ptr(), PANEL) };
            let row = &a[r * lda..r * lda + 2 * pairs];
            for (p, x) in row.chunks_exact(2).enumerate() {
                let (x0, x1) = (x[0].to_f32(), x[1].to_f32());
                let weights = &b[p * 2 * PANEL..(p + 1) * 2 * PANEL];
                for (sum, w) in sums.iter_mut().zip(weights.chunks_exact(2)) {
                    // Products of two bfloat16 are exact in f32.
                    *sum += x0 * w[0].to_f32() + x1 * w[1].to_f32();
                }
            }
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(sums.as_ptr(), c.add(r * ldc), PANEL) };
        }
    }

    /// # Safety
    /// As [`f32_tile`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn int8_tile(
        pairs: usize,
        a: &[i16],
        lda: usize,
        b: &[i8],
        row_scales: &[f32],
        column_scales: &[f32],
        c: *mut f32,
        ldc: usize,
    ) {
        for (r, row_scale) in row_scales.iter().enumerate() {
            let row = &a[r * lda..r * lda + 2 * pairs];
            let groups = row
                .chunks(2 * GROUP_PAIRS)
                .zip(column_scales.chunks_exact(PANEL));
            for (g, (group, column_scales)) in groups.enumerate() {
                let mut sums = [0i32; PANEL];
                for (p, x) in (g * GROUP_PAIRS..).zip(group.chunks_exact(2)) {
                    let weights = &b[p * 2 * PANEL..(p + 1) * 2 * PANEL];
                    for (sum, w) in sums.iter_mut().zip(weights.chunks_exact(2)) {
                        *sum +=
                            i32::from(x[0]) * i32::from(w[0]) + i32::from(x[1]) * i32::from(w[1]);
                    }
                }
                for (j, (sum, column_scale)) in sums.iter().zip(column_scales).enumerate() {
                    // SAFETY: the caller's promise.
                    unsafe {
                        let out = c.add(r * ldc + j);
                        *out = (*sum as f32).mul_add(row_scale * column_scale, *out);
                    }
                }
            }
        }
    }
}

/// How far ahead (in steps of one 64-byte line of a panel's weights) the
/// micro-kernels prefetch: a short batch reads each weight panel once, from
/// memory, and the hardware prefetcher stops at page ends. At batch 1, 8–64
/// measured alike and 0 some 15 % slower (AVX2, Zen 3).
#[cfg(target_arch = "x86_64")]
const PREFETCH_STEPS: usize = 32;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP_PAIRS, PANEL, PREFETCH_STEPS};
    use std::arch::x86_64::*;

    /// See `Kernel::f32_tile`, with `ROWS` rows.
    ///
    /// # Safety
    /// AVX2 and FMA present; pointers as `Kernel::f32_tile` promises.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn f32_tile<const ROWS: usize>(
        steps: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: the caller's promise on every pointer below.
        unsafe {
            let mut sums = [[_mm256_setzero_ps(); 2]; ROWS];
            for (r, sum) in sums.iter_mut().enumerate() {
                sum[0] = _mm256_loadu_ps(c.add(r * ldc));
                sum[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
            }
            for s in 0..steps {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((s + PREFETCH_STEPS) * PANEL).cast());
                let w0 = _mm256_loadu_ps(b.add(s * PANEL));
                let w1 = _mm256_loadu_ps(b.add(s * PANEL + 8));
                for (r, sum) in sums.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * lda + s));
                    sum[0] = _mm256_fmadd_ps(x, w0, sum[0]);
                    sum[1] = _mm256_fmadd_ps(x, w1, sum[1]);
                }
            }
            for (r, sum) in sums.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc), sum[0]);
                _mm256_storeu_ps(c.add(r * ldc + 8), sum[1]);
            }
        }
    }

    /// See `Kernel::int8_tile`, with `ROWS` rows.
    ///
    /// # Safety
    /// AVX2 present; pointers as `Kernel::int8_tile` promises.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn int8_tile<const ROWS: usize>(
        pairs: usize,
        a: *const i16,
        lda: usize,
        b: *const i8,
        row_scales: *const f32,
        column_scales: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: the caller's promise on every pointer below.
        unsafe {
            for (g, first) in (0..pairs).step_by(GROUP_PAIRS).enumerate() {
                let mut sums = [[_mm256_setzero_si256(); 2]; ROWS];
                for p in first..(first + GROUP_PAIRS).min(pairs) {
                    // 32 bytes of weights a step: as many bytes ahead as f32.
                    let ahead = b.wrapping_add((p + 2 * PREFETCH_STEPS) * 2 * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(p * 2 * PANEL).cast()));
                    let w1 =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(p * 2 * PANEL + PANEL).cast()));
                    for (r, sum) in sums.iter_mut().enumerate() {
                        let pair = a.add(r * lda + 2 * p).cast::<i32>().read_unaligned();
                        let x = _mm256_set1_epi32(pair);
                        sum[0] = _mm256_add_epi32(sum[0], _mm256_madd_epi16(x, w0));
                        sum[1] = _mm256_add_epi32(sum[1], _mm256_madd_epi16(x, w1));
                    }
                }
                let scale0 = _mm256_loadu_ps(column_scales.add(g * PANEL));
                let scale1 = _mm256_loadu_ps(column_scales.add(g * PANEL + 8));
                for (r, sum) in sums.iter().enumerate() {
                    let row_scale = _mm256_set1_ps(*row_scales.add(r));
                    let (out0, out1) = (c.add(r * ldc), c.add(r * ldc + 8));
                    let scaled0 = _mm256_mul_ps(scale0, row_scale);
                    let scaled1 = _mm256_mul_ps(scale1, row_scale);
                    let value0 = _mm256_cvtepi32_ps(sum[0]);
                    let value1 = _mm256_cvtepi32_ps(sum[1]);
                    _mm256_storeu_ps(
                        out0,
                        _mm256_fmadd_ps(value0, scaled0, _mm256_loadu_ps(out0)),
                    );
                    _mm256_storeu_ps(
                        out1,
                        _mm256_fmadd_ps(value1, scaled1, _mm256_loadu_ps(out1)),
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{F32_TILE_PANELS, GROUP_PAIRS, PANEL, PREFETCH_STEPS, PanelStrides};
    use half::bf16;
    use half::slice::HalfFloatSliceExt;
    use std::arch::x86_64::*;

    /// The tile's rows of `P` panels' output: loaded, or stored back.
    #[target_feature(enable = "avx512f")]
    unsafe fn load<const ROWS: usize, const P: usize>(
        c: *const f32,
        ldc: usize,
    ) -> [[__m512; P]; ROWS] {
        // SAFETY: the caller's promise: `c` holds ROWS rows of P·PANEL.
        std::array::from_fn(|r| {
            std::array::from_fn(|q| unsafe { _mm512_loadu_ps(c.add(r * ldc + q * PANEL)) })
        })
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn store<const ROWS: usize, const P: usize>(
        sums: &[[__m512; P]; ROWS],
        c: *mut f32,
        ldc: usize,
    ) {
        for (r, sum) in sums.iter().enumerate() {
            for (q, sum) in sum.iter().enumerate() {
                // SAFETY: as for `load`.
                unsafe { _mm512_storeu_ps(c.add(r * ldc + q * PANEL), *sum) };
            }
        }
    }

    /// See `Kernel::f32_tile`, with `ROWS` rows and [`F32_TILE_PANELS`]
    /// panels: 24 sums, each weight load serving 6 rows and each broadcast
    /// 4 panels.
    ///
    /// # Safety
    /// AVX-512F present; pointers as `Kernel::f32_tile` promises.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_tile<const ROWS: usize>(
        steps: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        panel_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: the caller's promise on every pointer below.
        unsafe {
            let mut sums = load::<ROWS, F32_TILE_PANELS>(c, ldc);
            for s in 0..steps {
                let weights: [__m512; F32_TILE_PANELS] = std::array::from_fn(|q| {
                    let panel = b.add(q * panel_stride);
                    let ahead = panel.wrapping_add((s + PREFETCH_STEPS) * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    _mm512_loadu_ps(panel.add(s * PANEL))
                });
                for (r, sum) in sums.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + s));
                    for (sum, w) in sum.iter_mut().zip(weights) {
                        *sum = _mm512_fmadd_ps(x, w, *sum);
                    }
                }
            }
            store(&sums, c, ldc);
        }
    }

    /// `values` rounded to bfloat16 into `out` (to nearest, ties to even;
    /// subnormals flush to zero, as `vdpbf16ps` reads them anyway).
    ///
    /// # Safety
    /// AVX-512F and BF16 present; `out` as long as `values`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_to_bf16(values: &[f32], out: &mut [bf16]) {
        debug_assert_eq!(values.len(), out.len());
        let whole = values.len() / 16 * 16;
        for start in (0..whole).step_by(16) {
            // SAFETY: 16 values from `start` in both; __m256bh is the 16
            // bfloat16 bit patterns.
            unsafe {
                let rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(values.as_ptr().add(start)));
                _mm256_storeu_si256(
                    out.as_mut_ptr().add(start).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(rounded),
                );
            }
        }
        out[whole..].convert_from_f32_slice(&values[whole..]);
    }

    /// See `Kernel::bf16_tile`, with `ROWS` rows and two panels; `a` and
    /// `b` hold bfloat16 bits.
    ///
    /// # Safety
    /// AVX-512F and BF16 present; pointers as `Kernel::bf16_tile` promises.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_tile<const ROWS: usize>(
        pairs: usize,
        a: *const u16,
        lda: usize,
        b: *const u16,
        panel_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // A step is one input pair of 16 columns: 64 bytes, one line.
        let step = 2 * PANEL;
        // SAFETY: the caller's promise on every pointer below; a __m512bh
        // is 32 bfloat16 bit patterns, as loaded.
        unsafe {
            let next = b.add(panel_stride);
            let mut sums = load::<ROWS, 2>(c, ldc);
            for p in 0..pairs {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + PREFETCH_STEPS) * step).cast());
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add((p + PREFETCH_STEPS) * step).cast());
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * step).cast()));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(next.add(p * step).cast()));
                for (r, sum) in sums.iter_mut().enumerate() {
                    let pair = a.add(r * lda + 2 * p).cast::<i32>().read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    sum[0] = _mm512_dpbf16_ps(sum[0], x, w0);
                    sum[1] = _mm512_dpbf16_ps(sum[1], x, w1);
                }
            }
            store(&sums, c, ldc);
        }
    }

    /// See `Kernel::int8_tile`, with `ROWS` rows and two panels.
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI present; pointers as `Kernel::int8_tile`
    /// promises.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn int8_tile<const ROWS: usize>(
        pairs: usize,
        a: *const i16,
        lda: usize,
        b: *const i8,
        row_scales: *const f32,
        column_scales: *const f32,
        strides: PanelStrides,
        c: *mut f32,
        ldc: usize,
    ) {
        // A step is one input pair of 16 columns: 32 bytes, half a line.
        let step = 2 * PANEL;
        // SAFETY: the caller's promise on every pointer below.
        unsafe {
            let next = b.add(strides.weights);
            let next_scales = column_scales.add(strides.scales);
            for (g, first) in (0..pairs).step_by(GROUP_PAIRS).enumerate() {
                let mut sums = [[_mm512_setzero_si512(); 2]; ROWS];
                for p in first..(first + GROUP_PAIRS).min(pairs) {
                    let ahead = (p + 2 * PREFETCH_STEPS) * step;
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead).cast());
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(ahead).cast());
                    let w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(b.add(p * step).cast()));
                    let w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(next.add(p * step).cast()));
                    for (r, sum) in sums.iter_mut().enumerate() {
                        let pair = a.add(r * lda + 2 * p).cast::<i32>().read_unaligned();
                        let x = _mm512_set1_epi32(pair);
                        sum[0] = _mm512_dpwssd_epi32(sum[0], x, w0);
                        sum[1] = _mm512_dpwssd_epi32(sum[1], x, w1);
                    }
                }
                let scales = [
                    _mm512_loadu_ps(column_scales.add(g * PANEL)),
                    _mm512_loadu_ps(next_scales.add(g * PANEL)),
                ];
                for (r, sum) in sums.iter().enumerate() {
                    let row_scale = _mm512_set1_ps(*row_scales.add(r));
                    for (panel, (sum, scale)) in sum.iter().zip(scales).enumerate() {
                        let out = c.add(r * ldc + panel * PANEL);
                        let value = _mm512_cvtepi32_ps(*sum);
                        let scale = _mm512_mul_ps(scale, row_scale);
                        _mm512_storeu_ps(out, _mm512_fmadd_ps(value, scale, _mm512_loadu_ps(out)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_values::values;

    /// `out + input · Wᵀ` in f64.
    fn naive(
        input: &[f32],
        weight: &[f32],
        out: &[f32],
        inputs: usize,
        outputs: usize,
    ) -> Vec<f32> {
        let rows = input.len() / inputs;
        let mut result = out.to_vec();
        for r in 0..rows {
            for o in 0..outputs {
                let dot: f64 = (0..inputs)
                    .map(|i| f64::from(input[r * inputs + i]) * f64::from(weight[o * inputs + i]))
                    .sum();
                result[r * outputs + o] = (f64::from(out[r * outputs + o]) + dot) as f32;
            }
        }
        result
    }

    /// The same driver with the micro-kernel forced: each must agree with
    /// the reference on every shape.
    fn run_with(kernel: Kernel, matrix: &PackedMatrix, input: &[f32], out: &mut [f32]) {
        matrix.multiply_with(kernel, input, out, &KeepOutput);
    }

    /// `weight` packed as `kernel` reads it.
    fn packed(
        kernel: Kernel,
        weight: &[f32],
        (inputs, outputs): (usize, usize),
        precision: WeightPrecision,
        layout: F32Layout,
    ) -> PackedMatrix {
        PackedMatrix::for_kernel(weight, inputs, outputs, precision, layout, kernel)
    }

    /// Every micro-kernel this CPU can run; says which it cannot.
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                all.push(Kernel::Avx2);
            } else {
                eprintln!("skipped: the AVX2 kernels (this CPU lacks AVX2 or FMA)");
            }
            match Kernel::detect() {
                Kernel::Avx512 => {
                    all.push(Kernel::Avx512);
                    eprintln!("skipped: the AMX kernels (no AMX, or Linux refused its tiles)");
                }
                Kernel::Amx => all.extend([Kernel::Avx512, Kernel::Amx]),
                _ => eprintln!(
                    "skipped: the AVX-512 and AMX kernels (this CPU lacks AVX-512 BW or VNNI)"
                ),
            }
        }
        all
    }

    /// Odd shapes: partial strips, a partial last panel, an odd input count
    /// (int8's pairs), several input blocks, parallel and serial sizes;
    /// several row blocks on one thread and on several (AMX's tasks then
    /// convert their own rows), and short batches whose panels are split
    /// (their rows converted once).
    /// The last two: several of the AVX-512 f32 tile's input blocks and
    /// panel chunks, the short one with its panels split across threads.
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 3, 5),
        (7, 33, 17),
        (13, 300, 40),
        (80, 257, 48),
        (5, 600, 31),
        (150, 64, 96),
        (200, 40, 24),
        (500, 70, 40),
        (90, 1100, 300),
        (3, 1100, 300),
    ];

    /// Starts each row at a value naming its place, and finishes it by
    /// an affine map that a second run would show.
    struct Marked {
        outputs: usize,
    }

    impl Marked {
        fn start_value(&self, at: usize) -> f32 {
            (at % 97) as f32 * 0.01
        }
    }

    impl OutputRows for Marked {
        fn start(&self, row: usize, first_column: usize, values: &mut [f32]) {
            for (j, v) in values.iter_mut().enumerate() {
                *v = self.start_value(row * self.outputs + first_column + j);
            }
        }

        fn finish(&self, values: &mut [f32]) {
            values.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
        }
    }

    #[test]
    fn output_rows_start_and_finish_every_block_once() {
        // Includes multiplies split into tasks by rows and by panels.
        for (rows, inputs, outputs) in SHAPES {
            let weight = values(inputs * outputs, 1);
            let input = values(rows * inputs, 2);
            let marked = Marked { outputs };
            let start: Vec<f32> = (0..rows * outputs)
                .map(|at| marked.start_value(at))
                .collect();
            let expected: Vec<f32> = naive(&input, &weight, &start, inputs, outputs)
                .iter()
                .map(|v| 2.0 * v - 1.0)
                .collect();
            let runs = [
                (WeightPrecision::F32, F32Layout::Panels, 8e-5),
                (WeightPrecision::F32, F32Layout::Transposed, 8e-5),
                // Twice the rounding error the precisions' own tests allow:
                // the finish doubles it.
                (WeightPrecision::Bf16, F32Layout::Panels, 2.0 / 128.0),
                (WeightPrecision::Int8, F32Layout::Panels, 4.0 / 254.0),
            ];
            for (precision, layout, per_input) in runs {
                for kernel in kernels() {
                    let shape = (inputs, outputs);
                    let matrix = packed(kernel, &weight, shape, precision, layout);
                    let mut out = vec![f32::NAN; rows * outputs];
                    matrix.multiply_with(kernel, &input, &mut out, &marked);
                    for (i, (x, y)) in out.iter().zip(&expected).enumerate() {
                        let tolerance = per_input * (inputs as f32).sqrt();
                        assert!(
                            (x - y).abs() <= tolerance,
                            "{precision:?} {layout:?} {kernel:?} {rows}×{inputs}→{outputs} at {i}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f32_matches_a_plain_product_on_odd_shapes() {
        for (rows, inputs, outputs) in SHAPES {
            let weight = values(inputs * outputs, 1);
            let input = values(rows * inputs, 2);
            let initial = values(rows * outputs, 3);
            let expected = naive(&input, &weight, &initial, inputs, outputs);
            let panels = PackedMatrix::with_layout(
                &weight,
                inputs,
                outputs,
                WeightPrecision::F32,
                F32Layout::Panels,
            );
            let transposed = PackedMatrix::with_layout(
                &weight,
                inputs,
                outputs,
                WeightPrecision::F32,
                F32Layout::Transposed,
            );
            // The kernel choice does not apply to the transposed layout.
            let runs = kernels()
                .into_iter()
                .map(|kernel| (kernel, &panels, "panels"))
                .chain([(Kernel::Portable, &transposed, "gemm")]);
            for (kernel, matrix, layout) in runs {
                let mut out = initial.clone();
                run_with(kernel, matrix, &input, &mut out);
                for (i, (x, y)) in out.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (inputs as f32).sqrt() * 4.0;
                    assert!(
                        (x - y).abs() <= tolerance,
                        "{layout} {kernel:?} {rows}×{inputs}→{outputs} at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    /// `precision` on every shape and micro-kernel: within `tolerance(inputs)`
    /// of the f64 product, and the kernels within `agreement(inputs, value)`
    /// of one another.
    fn check_reduced_precision(
        precision: WeightPrecision,
        seed: u32,
        tolerance: impl Fn(usize) -> f32,
        agreement: impl Fn(usize, f32) -> f32,
    ) {
        for (rows, inputs, outputs) in SHAPES {
            let weight = values(inputs * outputs, seed);
            let input = values(rows * inputs, seed + 1);
            let initial = values(rows * outputs, seed + 2);
            let expected = naive(&input, &weight, &initial, inputs, outputs);
            let mut results = Vec::new();
            for kernel in kernels() {
                let shape = (inputs, outputs);
                let matrix = packed(kernel, &weight, shape, precision, F32Layout::Panels);
                let mut out = initial.clone();
                run_with(kernel, &matrix, &input, &mut out);
                for (i, (x, y)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (x - y).abs() <= tolerance(inputs),
                        "{precision:?} {kernel:?} {rows}×{inputs}→{outputs} at {i}: {x} vs {y}"
                    );
                }
                results.push(out);
            }
            for other in &results[1..] {
                for (x, y) in other.iter().zip(&results[0]) {
                    let bound = agreement(inputs, *y);
                    assert!((x - y).abs() <= bound, "{precision:?}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn int8_stays_within_its_quantisation_error() {
        check_reduced_precision(
            WeightPrecision::Int8,
            4,
            // Each weight is off by at most half a step (|w|max / 254),
            // each activation by far less; with uniform values the sum's
            // error grows like √inputs.
            |inputs| (inputs as f32).sqrt() / 254.0 * 2.0,
            // The integer sums are exact, so the micro-kernels differ only
            // in the order of the last scale and add.
            |_, y| 1e-5 * (1.0 + y.abs()),
        );
    }

    #[test]
    fn bf16_stays_within_its_rounding_error() {
        check_reduced_precision(
            WeightPrecision::Bf16,
            10,
            // Each weight and activation is off by at most 2⁻⁸ of itself;
            // with uniform values the sum's error grows like √inputs.
            |inputs| (inputs as f32).sqrt() / 128.0,
            // The products are exact in f32; the kernels differ only in
            // the order of the sums.
            |inputs, _| 1e-5 * (inputs as f32).sqrt() * 4.0,
        );
    }

    #[test]
    fn bf16_weights_round_to_nearest_even_in_pairs() {
        // 1 + 2⁻⁸ lies halfway between two bfloat16: it rounds to even, 1.
        let weight = [1.0 + 1.0 / 256.0, -2.0, 0.5, 3.0, 0.0, 0.0];
        let matrix = PackedMatrix::new(&weight, 3, 2, WeightPrecision::Bf16);
        let Values::Bf16(values) = &matrix.values else {
            panic!("not bf16");
        };
        let at = |i: usize| values[i].to_f32();
        // Column 0: inputs 0 and 1 side by side, then input 2 paired with 0.
        assert_eq!([at(0), at(1)], [1.0, -2.0]);
        assert_eq!([at(2 * PANEL), at(2 * PANEL + 1)], [0.5, 0.0]);
        // Column 1 starts after column 0's pair.
        assert_eq!([at(2), at(3)], [3.0, 0.0]);
        // A widest tile's panels are stored even for one column's worth,
        // each of one whole AMX step of pairs.
        assert_eq!(values.len(), MAX_TILE_PANELS * AMX_STEP_PAIRS * 2 * PANEL);
    }

    #[test]
    fn activations_round_to_bf16_alike_on_every_kernel() {
        let mut input = values(3 * 37, 13);
        input[5] = f32::NAN;
        input[40] = 1.0 + 1.0 / 256.0;
        input[41] = -(1.0 + 3.0 / 256.0);
        let expected: Vec<u32> = bf16_rows(Kernel::Portable, &input, 37, Spread::Threads)
            .iter()
            .map(|v| u32::from(v.to_bits()))
            .collect();
        for kernel in kernels() {
            let kernel = kernel.for_precision(WeightPrecision::Bf16);
            let rounded = bf16_rows(kernel, &input, 37, Spread::No);
            assert_eq!(rounded.len(), 3 * 2 * bf16_pairs(37));
            for (i, (x, y)) in rounded.iter().zip(&expected).enumerate() {
                let x = u32::from(x.to_bits());
                if i == 5 {
                    assert!(bf16::from_bits(x as u16).is_nan(), "{kernel:?}");
                } else {
                    assert_eq!(x, *y, "{kernel:?} at {i}");
                }
            }
        }
        let row = 2 * bf16_pairs(37);
        assert_eq!(expected[row + 3], u32::from(bf16::from_f32(1.0).to_bits()));
        assert_eq!(
            expected[row + 4],
            u32::from(bf16::from_f32(-(1.0 + 4.0 / 256.0)).to_bits())
        );
    }

    #[test]
    fn int8_weights_round_to_their_column_scale() {
        let weight = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0];
        let matrix = packed(
            Kernel::Portable,
            &weight,
            (3, 2),
            WeightPrecision::Int8,
            F32Layout::Panels,
        );
        let Values::Int8 { values, scales } = &matrix.values else {
            panic!("not int8");
        };
        assert_eq!(scales[0], 1.0 / 127.0);
        // An all-zero column keeps a zero scale instead of dividing by zero.
        assert_eq!(scales[1], 0.0);
        // Column 0: inputs 0 and 1 side by side, then input 2 paired with 0.
        assert_eq!(&values[0..2], &[64, -127]);
        assert_eq!(&values[2 * PANEL..2 * PANEL + 2], &[32, 0]);
    }

    #[test]
    fn strips_are_even_and_cover_the_rows() {
        let strips = |rows: Range<usize>| {
            let mut lengths = Vec::new();
            let mut next = rows.start;
            for_each_strip(rows.clone(), |strip| {
                assert_eq!(strip.start, next);
                next = strip.end;
                lengths.push(strip.len());
            });
            assert_eq!(next, rows.end);
            lengths
        };
        assert_eq!(strips(0..20), vec![5, 5, 5, 5]);
        assert_eq!(strips(72..144), vec![6; 12]);
        assert_eq!(strips(3..16), vec![5, 4, 4]);
        assert_eq!(strips(7..9), vec![2]);
        assert!(strips(4..4).is_empty());
    }

    #[test]
    fn quantised_rows_keep_zero_rows_at_zero() {
        let input = [0.0, 0.0, 0.0, 1.0, -0.5, 0.25];
        let (q, scales) = quantise_rows(&input, 3, 4, Spread::No);
        // -0.5·32767 = -16383.5 rounds to even.
        assert_eq!(q, vec![0, 0, 0, 0, 32767, -16384, 8192, 0]);
        assert_eq!(scales, vec![0.0, 1.0 / 32767.0]);
    }

    #[test]
    fn int8_weights_pass_nan_on_to_their_column() {
        let weight = [0.5, f32::NAN, 0.25, 1.0, 0.5, 0.5];
        let matrix = PackedMatrix::new(&weight, 3, 2, WeightPrecision::Int8);
        let mut out = vec![0.0; 2];
        matrix.multiply_accumulate(&[1.0, 1.0, 1.0], &mut out);
        assert!(out[0].is_nan() && out[1].is_finite(), "{out:?}");
    }

    #[test]
    fn int8_passes_nan_and_infinity_on_to_their_rows() {
        let (inputs, outputs) = (4, 3);
        let weight = values(inputs * outputs, 9);
        let input = [
            0.5,
            f32::NAN,
            0.25,
            1.0,
            0.5,
            0.5,
            0.5,
            0.5,
            f32::INFINITY,
            0.0,
            0.0,
            0.0,
        ];
        for kernel in kernels() {
            let shape = (inputs, outputs);
            let matrix = packed(
                kernel,
                &weight,
                shape,
                WeightPrecision::Int8,
                F32Layout::Panels,
            );
            let mut out = vec![0.0; 3 * outputs];
            run_with(kernel, &matrix, &input, &mut out);
            assert!(
                out[..outputs].iter().all(|v| v.is_nan()),
                "{kernel:?} {out:?}"
            );
            assert!(
                out[outputs..2 * outputs].iter().all(|v| v.is_finite()),
                "{kernel:?}"
            );
            assert!(
                out[2 * outputs..].iter().all(|v| v.is_nan()),
                "{kernel:?} {out:?}"
            );
        }
    }
}
