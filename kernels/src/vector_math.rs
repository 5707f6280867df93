//! `exp` and the error function written branch-free, so a loop over a slice
//! compiles to SIMD code. libm's `expf`/`erff` are exact to the last bit but
//! scalar and branchy: in the encoder's GELU and softmax they took a fifth
//! of the time. These stay within a few units in the last place of f32 (the
//! tests bound them against f64), which keeps the encoder's parity.

/// 1.5·2²³: adding it rounds an f32 of magnitude below 2²² to an integer,
/// which then sits in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;

/// exp's arguments are clamped to this range: e^x stays a normal f32.
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
/// ln 2 split in two, so n·LN2_HI is exact for the n that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// e^r for |r| ≤ ln 2 / 2: Taylor to r⁷, highest power first; the first
/// term left out is below 6e-9 relative.
const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for any finite x; results below f32's smallest normal come out as
/// about 1.6e-38 instead of 0, and above e^88 as e^88.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2, then e^x = 2^n · e^r.
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, c| p * r + c);
    p * f32::from_bits(((n_bits + 127) as u32) << 23)
}

/// Numerical Recipes' Chebyshev fit of erfc, in the variable
/// t = 1 / (1 + z/2): erfc(z) = t · e^(poly(t) − z²), relative error below
/// 1.2e-7 for every z ≥ 0. Highest power first.
const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// erfc(z)/2 for z ≥ 0, to 1.5e-7 relative (see [`ERFC_POLY`]).
#[inline(always)]
fn half_erfc(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = ERFC_POLY[1..].iter().fold(ERFC_POLY[0], |p, c| p * t + c);
    0.5 * t * exp(p - z * z)
}

/// GELU with the exact error function: x·Φ(x), Φ the standard normal
/// distribution function. Φ is taken from its tail erfc(|x|/√2)/2 on
/// either side of 0, so a negative x loses no digits to 1 + erf(x/√2).
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let tail = half_erfc(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    x * if x < 0.0 { tail } else { 1.0 - tail }
}

/// [`gelu_erf`] over every value, in the CPU's widest vectors.
pub(crate) fn gelu_erf_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Width::Avx512 = Width::of_this_cpu() {
        // SAFETY: the CPU was found to support AVX-512F.
        unsafe { avx512::gelu_erf_in_place(values) };
        return;
    }
    map_in_place(values, gelu_erf);
}

/// Replaces every value v by e^(v − shift) and returns their sum, in the
/// CPU's widest vectors.
pub(crate) fn exp_shifted_in_place(values: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Width::Avx512 = Width::of_this_cpu() {
        // SAFETY: the CPU was found to support AVX-512F.
        return unsafe { avx512::exp_shifted_in_place(values, shift) };
    }
    map_in_place(values, move |v| exp(v - shift));
    sum_of(values, |v| v)
}

/// The widest vector instructions the loops below are compiled for on this
/// CPU: each public loop has a twin per width, the same `#[inline(always)]`
/// body under that `target_feature`, so the closure inlines into it.
#[derive(Clone, Copy)]
enum Width {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Width {
    #[inline(always)]
    fn of_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Width::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Width::Avx2;
            }
        }
        Width::Plain
    }
}

/// Applies `f` to every value, in the CPU's widest vectors.
#[inline(always)]
pub(crate) fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    match Width::of_this_cpu() {
        Width::Plain => map(values, f),
        // SAFETY: the CPU was found to support the twin's instructions.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { map_avx2(values, f) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { map_avx512(values, f) },
    }
}

#[inline(always)]
fn map(values: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    values.iter_mut().for_each(|v| *v = f(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn map_avx2(values: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    map(values, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_avx512(values: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    map(values, f);
}

/// `out[i] = f(input[i])` over the shorter of the two, in the CPU's widest
/// vectors.
#[inline(always)]
pub(crate) fn map_into<T>(input: &[f32], out: &mut [T], f: impl Fn(f32) -> T + Copy) {
    match Width::of_this_cpu() {
        Width::Plain => map_into_lanes(input, out, f),
        // SAFETY: the CPU was found to support the twin's instructions.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { map_into_avx2(input, out, f) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { map_into_avx512(input, out, f) },
    }
}

#[inline(always)]
fn map_into_lanes<T>(input: &[f32], out: &mut [T], f: impl Fn(f32) -> T + Copy) {
    out.iter_mut().zip(input).for_each(|(o, v)| *o = f(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn map_into_avx2<T>(input: &[f32], out: &mut [T], f: impl Fn(f32) -> T + Copy) {
    map_into_lanes(input, out, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_into_avx512<T>(input: &[f32], out: &mut [T], f: impl Fn(f32) -> T + Copy) {
    map_into_lanes(input, out, f);
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2²²: adding
/// 1.5·2²³ leaves no fraction bits, and unlike `f32::round` (a libm call
/// without SSE4.1) it compiles to two vector additions.
#[inline(always)]
pub(crate) fn round_small(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (x + SHIFT) - SHIFT
}

/// Folds the values with `f` (associative and commutative: the order is
/// lane by lane), in the CPU's widest vectors.
#[inline(always)]
pub(crate) fn reduce(values: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    fold(values, init, f, f)
}

/// Σ f(v) over the values (summed lane by lane), in the CPU's widest
/// vectors.
#[inline(always)]
pub(crate) fn sum_of(values: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f32 {
    fold(values, 0.0, move |sum, v| sum + f(v), |a, b| a + b)
}

/// `step`s each value into one of sixteen running results, then `combine`s
/// those: `step(acc, v)` must agree with `combine(acc, step(init, v))`.
#[inline(always)]
fn fold(
    values: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32 + Copy,
    combine: impl Fn(f32, f32) -> f32 + Copy,
) -> f32 {
    match Width::of_this_cpu() {
        Width::Plain => fold_lanes(values, init, step, combine),
        // SAFETY: the CPU was found to support the twin's instructions.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { fold_avx2(values, init, step, combine) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { fold_avx512(values, init, step, combine) },
    }
}

/// Sixteen running results side by side (one AVX-512 register, two AVX2
/// ones), so the loop has no chain from one value to the next and compiles
/// to vector instructions.
#[inline(always)]
fn fold_lanes(
    values: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32 + Copy,
    combine: impl Fn(f32, f32) -> f32 + Copy,
) -> f32 {
    let mut lanes = [init; 16];
    let chunks = values.chunks_exact(lanes.len());
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, *v);
        }
    }
    let combined = lanes.into_iter().fold(init, combine);
    tail.iter().fold(combined, |acc, v| step(acc, *v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fold_avx2(
    values: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32 + Copy,
    combine: impl Fn(f32, f32) -> f32 + Copy,
) -> f32 {
    fold_lanes(values, init, step, combine)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fold_avx512(
    values: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32 + Copy,
    combine: impl Fn(f32, f32) -> f32 + Copy,
) -> f32 {
    fold_lanes(values, init, step, combine)
}

/// The GELU and softmax loops written with AVX-512 intrinsics: the
/// compiler does not fuse the portable code's multiplies and adds, nor use
/// `vscalefps` and `vrcp14ps`, which halve the instructions per value.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ERFC_POLY, EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;

    const LANES: usize = 16;

    /// `poly` (highest power first) at `x`, by fused multiply-adds.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn horner(poly: &[f32], x: __m512) -> __m512 {
        poly[1..].iter().fold(_mm512_set1_ps(poly[0]), |p, c| {
            _mm512_fmadd_ps(p, x, _mm512_set1_ps(*c))
        })
    }

    /// The portable `exp` lane by lane, the power of two applied by
    /// `vscalefps`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(EXP_MAX)),
            _mm512_set1_ps(EXP_MIN),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        _mm512_scalef_ps(horner(&EXP_POLY, r), n)
    }

    /// The portable `gelu_erf` lane by lane; 1/(1 + z/2) by `vrcp14ps`
    /// and one Newton step (about 2⁻²⁸ relative).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu_erf(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let half = _mm512_set1_ps(0.5);
        let z = _mm512_mul_ps(
            _mm512_abs_ps(x),
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        );
        let d = _mm512_fmadd_ps(z, half, one);
        let t = _mm512_rcp14_ps(d);
        let t = _mm512_fmadd_ps(t, _mm512_fnmadd_ps(d, t, one), t);
        let p = horner(&ERFC_POLY, t);
        let tail = _mm512_mul_ps(_mm512_mul_ps(half, t), exp(_mm512_fnmadd_ps(z, z, p)));
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let phi = _mm512_mask_blend_ps(negative, _mm512_sub_ps(one, tail), tail);
        _mm512_mul_ps(x, phi)
    }

    /// Runs `f` on every value in place, 16 at a time, the last few under
    /// a mask; `f` also sees which lanes are real.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn each_vector(values: &mut [f32], mut f: impl FnMut(__m512, __mmask16) -> __m512) {
        let chunks = values.chunks_exact_mut(LANES);
        for chunk in chunks {
            // SAFETY: the chunk holds 16 values.
            unsafe {
                let v = _mm512_loadu_ps(chunk.as_ptr());
                _mm512_storeu_ps(chunk.as_mut_ptr(), f(v, !0));
            }
        }
        let whole = values.len() / LANES * LANES;
        let tail = &mut values[whole..];
        if !tail.is_empty() {
            let mask: __mmask16 = (1 << tail.len()) - 1;
            // SAFETY: the mask covers the tail's values alone.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, tail.as_ptr());
                _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, f(v, mask));
            }
        }
    }

    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu_erf_in_place(values: &mut [f32]) {
        each_vector(values, |v, _| gelu_erf(v));
    }

    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_in_place(values: &mut [f32], shift: f32) -> f32 {
        let shift = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        each_vector(values, |v, real| {
            let e = exp(_mm512_sub_ps(v, shift));
            sum = _mm512_mask_add_ps(sum, real, sum, e);
            e
        });
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(from: f32, to: f32, steps: usize) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |i| from + (to - from) * i as f32 / steps as f32)
    }

    #[test]
    fn small_values_round_to_nearest_even() {
        for (x, expected) in [(2.5, 2.0), (3.5, 4.0), (-2.5, -2.0), (-16383.5, -16384.0)] {
            assert_eq!(round_small(x), expected, "{x}");
        }
        for x in grid(-40_000.0, 40_000.0, 100_003) {
            assert_eq!(round_small(x), x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f64;
        for x in grid(-87.0, 88.0, 200_000) {
            let exact = (x as f64).exp();
            let relative = ((exp(x) as f64 - exact) / exact).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert!(exp(-1000.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    /// The relative error erfc(z) may have in f32 (measured up to 4.5e-7
    /// below z = 1, 7.7e-6 at 9): the fit's 1.2e-7 and the rounding of a
    /// dozen operations, plus that of the exponent −z² + poly(t), which
    /// grows with z².
    fn erfc_tolerance(z: f64) -> f64 {
        1e-6 + 1.2e-7 * z * z
    }

    #[test]
    fn half_erfc_is_within_its_rounding() {
        for z in grid(0.0, 9.0, 200_000) {
            let exact = libm::erfc(z as f64) / 2.0;
            let error = ((half_erfc(z) as f64 - exact) / exact).abs();
            assert!(
                error < erfc_tolerance(z as f64),
                "erfc({z})/2: {error:e} relative"
            );
        }
    }

    /// GELU in f64, and how far an f32 result may stray from it: a few
    /// units in the last place, and the tail's rounding for negative x,
    /// whose argument x/√2 is itself rounded (1.2e-7·z² more).
    fn gelu_f64(x: f32) -> (f64, f64) {
        let x = x as f64;
        let exact = 0.5 * x * libm::erfc(-x / 2f64.sqrt());
        let z = x / 2f64.sqrt();
        let tolerance = 4.0 * f64::from(f32::EPSILON) + erfc_tolerance(z) + 1.2e-7 * z * z;
        (exact, tolerance * exact.abs())
    }

    #[test]
    fn gelu_is_within_a_few_ulp_in_every_width() {
        let xs: Vec<f32> = grid(-12.0, 12.0, 100_003).collect();
        let mut portable = xs.clone();
        map_in_place(&mut portable, gelu_erf);
        let mut widest = xs.clone();
        gelu_erf_in_place(&mut widest);
        for (i, &x) in xs.iter().enumerate() {
            let (exact, tolerance) = gelu_f64(x);
            for (name, result) in [("portable", portable[i]), ("widest", widest[i])] {
                let error = (result as f64 - exact).abs();
                assert!(
                    error <= tolerance,
                    "{name} GELU({x}) = {result}, not {exact}"
                );
            }
        }
        // A tail shorter than a vector.
        let mut short = [-1.5, 0.0, 2.5];
        gelu_erf_in_place(&mut short);
        assert_eq!(short[1], 0.0);
        assert!((short[2] as f64 - gelu_f64(2.5).0).abs() < 1e-6);
    }

    #[test]
    fn exp_shifted_sums_what_it_writes() {
        for len in [0, 5, 16, 37] {
            let original: Vec<f32> = (0..len).map(|i| (i as f32 * 0.77).sin() * 20.0).collect();
            let mut values = original.clone();
            let sum = exp_shifted_in_place(&mut values, 3.0);
            let mut exact_sum = 0f64;
            for (v, x) in values.iter().zip(&original) {
                let exact = f64::from(x - 3.0).exp();
                assert!(
                    ((*v as f64 - exact) / exact).abs() < 4e-7,
                    "e^({x} - 3) = {v}"
                );
                exact_sum += exact;
            }
            assert!(
                (sum as f64 - exact_sum).abs() <= 1e-6 * exact_sum,
                "{sum} vs {exact_sum}"
            );
        }
    }

    #[test]
    fn reduce_folds_every_value() {
        let values: Vec<f32> = (0..37).map(|i| (i * 7 % 37) as f32).collect();
        assert_eq!(reduce(&values, 0.0, |a, b| a + b), 666.0);
        assert_eq!(reduce(&values, f32::NEG_INFINITY, f32::max), 36.0);
        assert_eq!(reduce(&values[..3], f32::NEG_INFINITY, f32::max), 14.0);
        assert_eq!(reduce(&[], 0.0, |a, b| a + b), 0.0);
        assert_eq!(
            sum_of(&values, |v| v * v),
            (0..37).map(|i| (i * i) as f32).sum::<f32>()
        );
        assert_eq!(
            sum_of(&values[..5], |v| v - 1.0),
            0.0 + 7.0 + 14.0 + 21.0 + 28.0 - 5.0
        );
    }

    #[test]
    fn map_applies_to_every_value() {
        let mut values: Vec<f32> = (0..37).map(|i| i as f32 / 10.0).collect();
        map_in_place(&mut values, |v| v * 2.0);
        assert!(values.iter().enumerate().all(|(i, v)| *v == i as f32 / 5.0));
    }
}
