//! Intel AMX tiles (Sapphire Rapids and later) for the bf16 and int8 dense
//! layers: eight tile registers of up to 16 rows × 64 bytes, multiplied by
//! `tdpbf16ps` (16 × 16 f32 sums of 32 bf16 products each, per
//! instruction) and `tdpbssd` / `tdpbusd` (16 × 16 i32 sums of 64 byte
//! products). The instructions are written with `asm!`: Rust's AMX
//! intrinsics are unstable on the toolchain pulse builds with.
//!
//! Linux hands the tiles' 8 KiB of register state to a process only when
//! it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without
//! that grant the first tile instruction kills the process, so [`granted`]
//! asks once and the kernels run only where both the CPU and the kernel
//! said yes.
//!
//! Each thread keeps the tile shape it last configured (`ldtilecfg` is
//! cheap beside a block's sums but not free) and never releases the tiles:
//! the same rayon threads run every multiply.
//!
//! - **bf16**: a block is up to 32 rows (two row tiles) × two panels, its
//!   four f32 output tiles loaded from the output (which holds the bias),
//!   summed over every input in steps of 16 pairs, and stored back. The
//!   weights are the bf16 panels as the AVX-512 kernel reads them (a
//!   panel's 16 pairs × 16 columns × 2 are one 1 KiB B tile, already in
//!   the pair-interleaved layout `tdpbf16ps` wants).
//! - **int8**: the activations keep their 16-bit quantisation: each value
//!   x is split into a signed high byte h and an unsigned low byte l,
//!   with x = 256·h + l exactly, multiplied by `tdpbssd` and `tdpbusd`
//!   against the same int8 weights (stored in quads,
//!   `[panel][quad][column][4]`, as the
//!   instructions read them), and recombined as 256·Σh·w + Σl·w in i32 for
//!   each group of 64 inputs before its scales apply. So int8 on AMX
//!   computes what the AVX-512 and AVX2 int8 kernels compute, the same
//!   integer sums, with the same accuracy.

use super::{GROUP_PAIRS, PANEL};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows in a tile, and bytes in a tile row.
pub(super) const TILE_ROWS: usize = 16;
const TILE_BYTES: usize = 64;
// A bf16 step covers a 64-byte row of the activations' tile: 16 pairs.
const _: () = assert!(super::AMX_STEP_PAIRS == TILE_BYTES / 4);
/// Inputs one int8 step covers: a 64-byte row of the A tile, which is one
/// quantisation group.
pub(super) const INT8_STEP_INPUTS: usize = TILE_BYTES;
const _: () = assert!(INT8_STEP_INPUTS == 2 * GROUP_PAIRS);

/// Whether this process may run AMX's bf16 and int8 tiles: the CPU has
/// them and Linux granted the tile state. Asked once.
pub(super) fn granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx() && request_tile_state())
}

fn cpu_has_amx() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, 24 AMX-TILE, 25
    // AMX-INT8. The tiles also need AVX-512 for everything around them
    // (rounding to bf16, the int8 rescale), which the caller checks.
    let leaf = __cpuid_count(7, 0);
    let amx = (1 << 22) | (1 << 24) | (1 << 25);
    leaf.edx & amx == amx
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which extended
    // states the process may use; it reads no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// What the eight tile registers hold for one block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Shape {
    /// tmm0–3: f32 sums of row tile i and panel j at 2i + j; tmm4–5: the
    /// activations of row tile i; tmm6–7: the weights of panel j. `rows`
    /// and `columns` hold each row tile's rows and each panel's columns (0:
    /// absent).
    Bf16 { rows: [u8; 2], columns: [u8; 2] },
    /// tmm0–1: i32 sums of the high bytes for panel j; tmm2–3: of the low
    /// bytes; tmm4: high bytes, tmm5: low bytes of one row tile of `rows`;
    /// tmm6–7: the weights of panel j.
    Int8 { rows: u8, columns: [u8; 2] },
}

/// The 64-byte operand of `ldtilecfg`.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl Shape {
    fn config(self) -> TileConfig {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        let mut set = |tile: usize, rows: u8, bytes: usize| {
            if rows > 0 && bytes > 0 {
                config.rows[tile] = rows;
                config.bytes_per_row[tile] = bytes as u16;
            }
        };
        match self {
            Shape::Bf16 { rows, columns } => {
                for (i, &r) in rows.iter().enumerate() {
                    for (j, &n) in columns.iter().enumerate() {
                        set(2 * i + j, r, 4 * usize::from(n));
                    }
                    set(4 + i, r, TILE_BYTES);
                }
                for (j, &n) in columns.iter().enumerate() {
                    set(6 + j, TILE_ROWS as u8, 4 * usize::from(n));
                }
            }
            Shape::Int8 { rows, columns } => {
                for (j, &n) in columns.iter().enumerate() {
                    set(j, rows, 4 * usize::from(n));
                    set(2 + j, rows, 4 * usize::from(n));
                    set(6 + j, TILE_ROWS as u8, 4 * usize::from(n));
                }
                set(4, rows, TILE_BYTES);
                set(5, rows, TILE_BYTES);
            }
        }
        config
    }

    /// Makes this the tile registers' shape on the calling thread.
    fn configure(self) {
        thread_local! {
            static LOADED: Cell<Option<Shape>> = const { Cell::new(None) };
        }
        if LOADED.get() == Some(self) {
            return;
        }
        let config = self.config();
        // SAFETY: the tile state was granted (the callers run only where
        // `granted` said so) and `config` is a valid palette-1 layout: at
        // most 16 rows and 64 bytes a tile.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        LOADED.set(Some(self));
    }
}

/// `tileloadd tmm{tile}, [at + stride·row]`.
macro_rules! tile_op {
    (load $tile:literal, $at:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $tile, ", [{}+{}*1]"), in(reg) $at, in(reg) $stride,
             options(nostack, readonly))
    };
    (store $tile:literal, $at:expr, $stride:expr) => {
        asm!(concat!("tilestored [{}+{}*1], tmm", $tile), in(reg) $at, in(reg) $stride,
             options(nostack))
    };
    (zero $tile:literal) => {
        asm!(concat!("tilezero tmm", $tile), options(nostack, nomem))
    };
}

/// Loads tile `tile` (0–7) from `at`, rows `stride` bytes apart.
///
/// # Safety
/// The tile is configured; every row it reads lies in memory we may read.
#[inline(always)]
unsafe fn load(tile: usize, at: *const u8, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match tile {
            0 => tile_op!(load "0", at, stride),
            1 => tile_op!(load "1", at, stride),
            2 => tile_op!(load "2", at, stride),
            3 => tile_op!(load "3", at, stride),
            4 => tile_op!(load "4", at, stride),
            5 => tile_op!(load "5", at, stride),
            6 => tile_op!(load "6", at, stride),
            _ => tile_op!(load "7", at, stride),
        }
    }
}

/// Stores sum tile `tile` (0–3) to `at`, rows `stride` bytes apart.
///
/// # Safety
/// The tile is configured; every row it writes lies in memory we may write.
#[inline(always)]
unsafe fn store(tile: usize, at: *mut u8, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match tile {
            0 => tile_op!(store "0", at, stride),
            1 => tile_op!(store "1", at, stride),
            2 => tile_op!(store "2", at, stride),
            _ => tile_op!(store "3", at, stride),
        }
    }
}

/// Zeroes sum tile `tile` (0–3).
///
/// # Safety
/// The tile is configured.
#[inline(always)]
unsafe fn zero(tile: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match tile {
            0 => tile_op!(zero "0"),
            1 => tile_op!(zero "1"),
            2 => tile_op!(zero "2"),
            _ => tile_op!(zero "3"),
        }
    }
}

/// bf16: sum tile 2i + j += activations tmm(4 + i) · weights tmm(6 + j).
///
/// # Safety
/// The three tiles are configured with matching shapes.
#[inline(always)]
unsafe fn dot_bf16(sum: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match sum {
            0 => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
            1 => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
            2 => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
            _ => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
        }
    }
}

/// int8: high-byte sums of panel j (tmm j) += tmm4 (signed) · tmm(6 + j),
/// low-byte sums (tmm 2 + j) += tmm5 (unsigned) · tmm(6 + j).
///
/// # Safety
/// The tiles are configured with matching shapes.
#[inline(always)]
unsafe fn dot_int8(panel: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        if panel == 0 {
            asm!(
                "tdpbssd tmm0, tmm4, tmm6",
                "tdpbusd tmm2, tmm5, tmm6",
                options(nostack, nomem)
            );
        } else {
            asm!(
                "tdpbssd tmm1, tmm4, tmm7",
                "tdpbusd tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
    }
}

/// The part of a matrix one block reads or writes: where it starts and
/// how many bytes apart its rows (or, for weights, its panels) lie.
#[derive(Clone, Copy)]
pub(super) struct Strided<P> {
    pub at: P,
    pub stride: usize,
}

/// What a block's sums start from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// The values `c` holds (a bias, a residual).
    Output,
    Zero,
}

/// `c = start + a · b` over one block: `a` holds the rows' bf16 values
/// (`steps` × 16 pairs each, zero-padded), `b` the first panel's pairs
/// (the second `b.stride` bytes on), `c` the f32 output of `rows[i]` rows
/// per row tile and `columns[j]` per panel.
///
/// # Safety
/// [`granted`]; every row and panel addressed so lies in its buffer, and
/// this thread alone touches `c`'s block.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn bf16_block(
    rows: [u8; 2],
    columns: [u8; 2],
    steps: usize,
    a: Strided<*const u8>,
    b: Strided<*const u8>,
    c: Strided<*mut u8>,
    start: Start,
) {
    Shape::Bf16 { rows, columns }.configure();
    let row_tiles = if rows[1] > 0 { 2 } else { 1 };
    let panels = if columns[1] > 0 { 2 } else { 1 };
    let sum_at = |i: usize, j: usize| c.at.wrapping_add(i * TILE_ROWS * c.stride + j * PANEL * 4);
    // SAFETY: the caller's promise on every address below; the shapes were
    // configured above.
    unsafe {
        for i in 0..row_tiles {
            for j in 0..panels {
                match start {
                    Start::Output => load(2 * i + j, sum_at(i, j), c.stride),
                    Start::Zero => zero(2 * i + j),
                }
            }
        }
        for step in 0..steps {
            for i in 0..row_tiles {
                let at = a.at.add(i * TILE_ROWS * a.stride + step * TILE_BYTES);
                load(4 + i, at, a.stride);
            }
            for j in 0..panels {
                let at = b.at.add(j * b.stride + step * TILE_ROWS * TILE_BYTES);
                load(6 + j, at, TILE_BYTES);
            }
            for i in 0..row_tiles {
                for j in 0..panels {
                    dot_bf16(2 * i + j);
                }
            }
        }
        for i in 0..row_tiles {
            for j in 0..panels {
                store(2 * i + j, sum_at(i, j), c.stride);
            }
        }
    }
}

/// One row tile's quantised activations: the high (signed) and low
/// (unsigned) bytes of each 16-bit value, rows `stride` bytes apart, and
/// each row's scale back to f32.
#[derive(Clone, Copy)]
pub(super) struct SplitRows {
    pub high: *const i8,
    pub low: *const u8,
    pub stride: usize,
    pub scales: *const f32,
}

/// `c += Σ_groups row_scale · column_scale · (a · b)` over one block of
/// `rows` rows and `columns[j]` columns per panel: `a` the activations'
/// bytes (`groups` × 64 inputs each, zero-padded), `b` the first panel's
/// quads (the second `b.stride` bytes on), `column_scales` the first
/// panel's scales (`[group][column]`, the second `column_scales.stride`
/// values on).
///
/// A panel at a time, its 16 rows' sums in 16 registers across the groups:
/// each group adds column scale × its integer sums, and the row scale,
/// the same for every group, is applied once at the end.
///
/// # Safety
/// [`granted`] and AVX-512F; every row, panel and scale addressed so lies
/// in its buffer, and this thread alone touches `c`'s block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn int8_block(
    rows: u8,
    columns: [u8; 2],
    groups: usize,
    a: SplitRows,
    b: Strided<*const i8>,
    column_scales: Strided<*const f32>,
    c: Strided<*mut f32>,
) {
    // The two sum tiles as stored: [high/low][row][column].
    let mut sums = [[[0i32; PANEL]; TILE_ROWS]; 2];
    let sums_stride = PANEL * 4;
    let c_stride = c.stride / 4;
    for (j, &width) in columns.iter().enumerate().filter(|(_, width)| **width > 0) {
        Shape::Int8 {
            rows,
            columns: [width, 0],
        }
        .configure();
        let mut totals = [_mm512_setzero_ps(); TILE_ROWS];
        // SAFETY: the caller's promise on every address below; the shape was
        // configured above.
        unsafe {
            for group in 0..groups {
                zero(0);
                zero(2);
                load(4, a.high.add(group * INT8_STEP_INPUTS).cast(), a.stride);
                load(5, a.low.add(group * INT8_STEP_INPUTS).cast(), a.stride);
                let weights = b.at.add(j * b.stride + group * TILE_ROWS * TILE_BYTES);
                load(6, weights.cast(), TILE_BYTES);
                dot_int8(0);
                store(0, sums[0].as_mut_ptr().cast(), sums_stride);
                store(2, sums[1].as_mut_ptr().cast(), sums_stride);
                let scale = column_scales
                    .at
                    .add(j * column_scales.stride + group * PANEL);
                let column_scale = _mm512_loadu_ps(scale);
                // Rows past `rows` sum stale values that are never stored.
                for (r, total) in totals.iter_mut().enumerate() {
                    let high = _mm512_loadu_si512(sums[0][r].as_ptr().cast());
                    let low = _mm512_loadu_si512(sums[1][r].as_ptr().cast());
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(high), low);
                    *total = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), column_scale, *total);
                }
            }
            let mask = (1u32 << width).wrapping_sub(1) as u16;
            for (r, total) in totals.iter().enumerate().take(usize::from(rows)) {
                let out = c.at.add(r * c_stride + j * PANEL);
                let row_scale = _mm512_set1_ps(*a.scales.add(r));
                let previous = _mm512_maskz_loadu_ps(mask, out);
                _mm512_mask_storeu_ps(out, mask, _mm512_fmadd_ps(*total, row_scale, previous));
            }
        }
    }
}

/// Whether [`attention_job`] runs heads of `head_dim` values: whole
/// steps of 32, for the scores' products.
pub(crate) fn runs_head_dim(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(2 * super::AMX_STEP_PAIRS)
}

/// One thread's buffers for [`attention_job`], kept between jobs.
#[derive(Default)]
pub(crate) struct AttentionScratch {
    /// The queries in bf16, `len × head_dim`.
    queries: Vec<u16>,
    /// Keys or values in bf16, row by row, before they are interleaved.
    rows: Vec<u16>,
    /// The keys as the scores' B tiles: `[key tile][dim step][pair][key]`,
    /// each a pair of bf16 in a u32.
    keys: Vec<u32>,
    /// The values as the context's B tiles: `[dim panel][key step][key
    /// pair][dim]`, each a pair of bf16 in a u32; zero past the last key.
    values: Vec<u32>,
    /// `len × padded` f32.
    scores: Vec<f32>,
    /// The softmax of the scores in bf16, `len × padded`, zero past `len`.
    probabilities: Vec<u16>,
}

/// Rows of f32 from `at`, `stride` values apart.
#[derive(Clone, Copy)]
pub(crate) struct Rows<P> {
    pub at: P,
    pub stride: usize,
}

/// One (sequence, head) of attention with both products on AMX tiles, in
/// bf16 with f32 sums: `out = softmax(q·kᵀ) · v` for `len` tokens of
/// `head_dim` values (the queries already scaled). `softmax` maps query
/// r's row of scores in place.
///
/// # Safety
/// [`granted`] and AVX-512 BF16; [`runs_head_dim`]; `q`, `k` and `v` hold
/// `len` rows of `head_dim` values and `out` as many, which no other
/// thread touches meanwhile.
pub(crate) unsafe fn attention_job(
    len: usize,
    head_dim: usize,
    (q, k, v): (Rows<*const f32>, Rows<*const f32>, Rows<*const f32>),
    out: Rows<*mut f32>,
    scratch: &mut AttentionScratch,
    softmax: impl Fn(usize, &mut [f32]),
) {
    let tile = TILE_ROWS;
    let pair_steps = head_dim / (2 * super::AMX_STEP_PAIRS);
    let padded = len.next_multiple_of(2 * super::AMX_STEP_PAIRS);
    let key_tiles = len.div_ceil(tile);
    let row = |rows: Rows<*const f32>, r: usize| {
        // SAFETY: the caller's promise: row r < len of head_dim values.
        unsafe { std::slice::from_raw_parts(rows.at.add(r * rows.stride), head_dim) }
    };
    let to_bf16 = |from: &[f32], to: &mut [u16]| {
        // SAFETY: AVX-512 BF16 (the caller's promise); bf16 is u16 bits.
        unsafe {
            super::avx512::round_to_bf16(
                from,
                std::slice::from_raw_parts_mut(to.as_mut_ptr().cast(), to.len()),
            )
        }
    };
    // Two bf16 side by side, the first in the low half: a B tile's pair.
    let pair = |first: u16, second: u16| u32::from(first) | (u32::from(second) << 16);

    scratch.queries.resize(len * head_dim, 0);
    for (r, to) in scratch.queries.chunks_exact_mut(head_dim).enumerate() {
        to_bf16(row(q, r), to);
    }
    // Keys: row n's pair p of dim step s goes to [n / 16][s][p][n % 16].
    scratch.rows.resize(len * head_dim, 0);
    for (r, to) in scratch.rows.chunks_exact_mut(head_dim).enumerate() {
        to_bf16(row(k, r), to);
    }
    let pairs = head_dim / 2;
    let tile_pairs = TILE_BYTES / 4;
    scratch.keys.clear();
    scratch
        .keys
        .resize(key_tiles * pair_steps * tile_pairs * tile, 0);
    for n in 0..len {
        for p in 0..pairs {
            let (step, p_in) = (p / tile_pairs, p % tile_pairs);
            let at = (((n / tile) * pair_steps + step) * tile_pairs + p_in) * tile + n % tile;
            let first = n * head_dim + 2 * p;
            scratch.keys[at] = pair(scratch.rows[first], scratch.rows[first + 1]);
        }
    }
    // Values: keys 2p and 2p + 1 of dim d go to [d / 16][p / 16][p % 16][d % 16].
    let key_steps = padded / (2 * tile_pairs);
    let panels = head_dim / PANEL;
    scratch.rows.clear();
    scratch.rows.resize(padded * head_dim, 0);
    for (r, to) in scratch
        .rows
        .chunks_exact_mut(head_dim)
        .take(len)
        .enumerate()
    {
        to_bf16(row(v, r), to);
    }
    scratch
        .values
        .resize(panels * key_steps * tile_pairs * PANEL, 0);
    for p in 0..padded / 2 {
        for d in 0..head_dim {
            let at = (((d / PANEL) * key_steps + p / tile_pairs) * tile_pairs + p % tile_pairs)
                * PANEL
                + d % PANEL;
            scratch.values[at] = pair(
                scratch.rows[2 * p * head_dim + d],
                scratch.rows[(2 * p + 1) * head_dim + d],
            );
        }
    }
    scratch.scores.resize(len * padded, 0.0);
    scratch.probabilities.resize(len * padded, 0);

    let tile_rows = |first: usize| (len - first).min(tile) as u8;
    let block_rows = |first: usize| {
        let second = first + tile;
        [
            tile_rows(first),
            if second < len { tile_rows(second) } else { 0 },
        ]
    };
    let key_tile_bytes = pair_steps * TILE_ROWS * TILE_BYTES;
    for first in (0..len).step_by(2 * tile) {
        // Scores of 32 queries against every key, two key tiles at a time.
        for key_tile in (0..key_tiles).step_by(2) {
            let columns = [
                tile_rows(key_tile * tile),
                if key_tile + 1 < key_tiles {
                    tile_rows((key_tile + 1) * tile)
                } else {
                    0
                },
            ];
            // SAFETY: the query rows and key tiles addressed exist in the
            // scratch buffers sized above; the scores block is this job's.
            unsafe {
                bf16_block(
                    block_rows(first),
                    columns,
                    pair_steps,
                    Strided {
                        at: scratch.queries.as_ptr().add(first * head_dim).cast(),
                        stride: 2 * head_dim,
                    },
                    Strided {
                        at: scratch
                            .keys
                            .as_ptr()
                            .cast::<u8>()
                            .add(key_tile * key_tile_bytes),
                        stride: key_tile_bytes,
                    },
                    Strided {
                        at: scratch
                            .scores
                            .as_mut_ptr()
                            .add(first * padded + key_tile * tile)
                            .cast(),
                        stride: 4 * padded,
                    },
                    Start::Zero,
                );
            }
        }
        let rows = first..(first + 2 * tile).min(len);
        for r in rows.clone() {
            let scores = &mut scratch.scores[r * padded..r * padded + len];
            softmax(r, scores);
            let probabilities = &mut scratch.probabilities[r * padded..(r + 1) * padded];
            to_bf16(scores, &mut probabilities[..len]);
            probabilities[len..].fill(0);
        }
        // The context of those queries, two dim panels at a time.
        let panel_bytes = key_steps * TILE_ROWS * TILE_BYTES;
        for panel in (0..panels).step_by(2) {
            let columns = [
                PANEL as u8,
                if panel + 1 < panels { PANEL as u8 } else { 0 },
            ];
            // SAFETY: as above; the output rows are the caller's.
            unsafe {
                bf16_block(
                    block_rows(first),
                    columns,
                    key_steps,
                    Strided {
                        at: scratch.probabilities.as_ptr().add(first * padded).cast(),
                        stride: 2 * padded,
                    },
                    Strided {
                        at: scratch
                            .values
                            .as_ptr()
                            .cast::<u8>()
                            .add(panel * panel_bytes),
                        stride: panel_bytes,
                    },
                    Strided {
                        at: out.at.add(first * out.stride + panel * PANEL).cast(),
                        stride: 4 * out.stride,
                    },
                    Start::Zero,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_leave_unused_tiles_empty() {
        let config = Shape::Bf16 {
            rows: [16, 0],
            columns: [16, 5],
        }
        .config();
        assert_eq!(&config.rows[..8], &[16, 16, 0, 0, 16, 0, 16, 16]);
        assert_eq!(&config.bytes_per_row[..8], &[64, 20, 0, 0, 64, 0, 64, 20]);
        let config = Shape::Int8 {
            rows: 3,
            columns: [16, 0],
        }
        .config();
        assert_eq!(&config.rows[..8], &[3, 0, 3, 0, 3, 3, 16, 0]);
        assert_eq!(&config.bytes_per_row[..8], &[64, 0, 64, 0, 64, 64, 64, 0]);
    }
}
