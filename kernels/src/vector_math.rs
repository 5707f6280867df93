//! `exp` and the error function written branch-free, so a loop over a slice
//! compiles to SIMD code. libm's `expf`/`erff` are exact to the last bit but
//! scalar and branchy: in the encoder's GELU and softmax they took a fifth
//! of the time. These stay within a few units in the last place of f32 (the
//! tests bound them against f64), which keeps the encoder's parity.

/// 1.5·2²³: adding it rounds an f32 of magnitude below 2²² to an integer,
/// which then sits in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;

/// e^x for any finite x; results below f32's smallest normal come out as
/// about 1.6e-38 instead of 0, and above e^88 as e^88.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2, then e^x = 2^n · e^r.
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor to r⁷: the first term left out is below 6e-9 relative.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((n_bits + 127) as u32) << 23)
}

/// The error function, to 3e-7 absolute: Numerical Recipes' Chebyshev
/// fit of erfc (relative error below 1.2e-7 for every argument).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    let erfc = t * exp(p - z * z);
    (1.0 - erfc).copysign(x)
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

    #[test]
    fn erf_is_within_3e7_absolute() {
        let mut worst = 0f64;
        for x in grid(-10.0, 10.0, 200_000) {
            let error = (erf(x) as f64 - libm::erf(x as f64)).abs();
            worst = worst.max(error);
        }
        assert!(worst < 3e-7, "worst absolute error {worst:e}");
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(erf(-20.0), -1.0);
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
