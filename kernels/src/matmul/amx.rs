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
//!   x is split into a signed high byte and an unsigned low byte (x = 256·h
//!   + l, exactly), multiplied by `tdpbssd` and `tdpbusd` against the same
//!   int8 weights (stored in quads, `[panel][quad][column][4]`, as the
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

/// int8: high-byte sums of panel j += tmm4 (signed) · tmm(6 + j), low-byte
/// sums += tmm5 (unsigned) · tmm(6 + j).
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

/// `c += a · b` over one block: `a` holds the rows' bf16 activations
/// (`steps` × 16 pairs each, zero-padded), `b` the first panel's pairs
/// (the second `b.stride` bytes on), `c` the f32 output of `rows[i]` rows
/// per row tile and `columns[j]` per panel.
///
/// # Safety
/// [`granted`]; every row and panel addressed so lies in its buffer, and
/// this thread alone touches `c`'s block.
pub(super) unsafe fn bf16_block(
    rows: [u8; 2],
    columns: [u8; 2],
    steps: usize,
    a: Strided<*const u8>,
    b: Strided<*const u8>,
    c: Strided<*mut u8>,
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
                load(2 * i + j, sum_at(i, j), c.stride);
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
/// panel's scales (`[group][column]`, the second `scales_stride` values on).
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
    Shape::Int8 { rows, columns }.configure();
    let panels = if columns[1] > 0 { 2 } else { 1 };
    // The four sum tiles as stored: [high/low][panel][row][column].
    let mut sums = [[[[0i32; PANEL]; TILE_ROWS]; 2]; 2];
    let sums_stride = PANEL * 4;
    let c_stride = c.stride / 4;
    // SAFETY: the caller's promise on every address below; the shapes were
    // configured above.
    unsafe {
        for group in 0..groups {
            for j in 0..panels {
                zero(j);
                zero(2 + j);
            }
            load(4, a.high.add(group * INT8_STEP_INPUTS).cast(), a.stride);
            load(5, a.low.add(group * INT8_STEP_INPUTS).cast(), a.stride);
            for j in 0..panels {
                let at = b.at.add(j * b.stride + group * TILE_ROWS * TILE_BYTES);
                load(6 + j, at.cast(), TILE_BYTES);
                dot_int8(j);
            }
            for j in 0..panels {
                store(j, sums[0][j].as_mut_ptr().cast(), sums_stride);
                store(2 + j, sums[1][j].as_mut_ptr().cast(), sums_stride);
            }
            for j in 0..panels {
                let scale = column_scales
                    .at
                    .add(j * column_scales.stride + group * PANEL);
                let column_scale = _mm512_loadu_ps(scale);
                for r in 0..usize::from(rows) {
                    let high = _mm512_loadu_si512(sums[0][j][r].as_ptr().cast());
                    let low = _mm512_loadu_si512(sums[1][j][r].as_ptr().cast());
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(high), low);
                    let scale = _mm512_mul_ps(column_scale, _mm512_set1_ps(*a.scales.add(r)));
                    let out = c.at.add(r * c_stride + j * PANEL);
                    let mask = (1u32 << columns[j]).wrapping_sub(1) as u16;
                    let previous = _mm512_maskz_loadu_ps(mask, out);
                    let value = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, previous);
                    _mm512_mask_storeu_ps(out, mask, value);
                }
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
