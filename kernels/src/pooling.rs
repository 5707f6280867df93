//! Pooling of token states into one vector per sequence, and L2 normalisation.
//!
//! The slice functions are the CPU implementation; [`pool`] takes Candle
//! tensors and picks the implementation by the tensor's device: the CUDA twin
//! (`cuda`, behind the feature of that name) for tensors on a GPU.

#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Device, Tensor};
use std::fmt;
use std::str::FromStr;

/// How token states become one sentence vector, named as in
/// sentence-transformers' pooling configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The first token's state (`[CLS]` / `<s>`).
    Cls,
    /// The mean over the tokens the mask keeps.
    Mean,
    /// The element-wise maximum over the tokens the mask keeps.
    Max,
    /// The sum over kept tokens divided by the square root of their number.
    MeanSqrtLen,
    /// The state of the last kept token (decoder-style embedding models).
    LastToken,
}

impl Pooling {
    pub const ALL: [Pooling; 5] = [
        Pooling::Cls,
        Pooling::Mean,
        Pooling::Max,
        Pooling::MeanSqrtLen,
        Pooling::LastToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
            Pooling::LastToken => "lasttoken",
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pooling mode `{0}` (expected one of cls, mean, max, mean_sqrt_len, lasttoken)")]
pub struct UnknownPooling(pub String);

impl FromStr for Pooling {
    type Err = UnknownPooling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cls" | "cls_token" => Ok(Pooling::Cls),
            "mean" | "mean_tokens" => Ok(Pooling::Mean),
            "max" | "max_tokens" => Ok(Pooling::Max),
            "mean_sqrt_len" | "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
            "lasttoken" | "last_token" => Ok(Pooling::LastToken),
            _ => Err(UnknownPooling(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolingError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Pools `hidden` (`batch × seq × dim`, row-major) under `mask`
/// (`batch × seq`, non-zero = real token) into `out` (`batch × dim`).
///
/// A sequence whose mask keeps no token pools to zeros rather than NaN.
pub fn pool_cpu(
    hidden: &[f32],
    mask: &[u32],
    batch: usize,
    seq: usize,
    dim: usize,
    pooling: Pooling,
    out: &mut [f32],
) -> Result<(), PoolingError> {
    if hidden.len() != batch * seq * dim {
        return Err(PoolingError::Shape(format!(
            "hidden has {} values, expected {batch}×{seq}×{dim}",
            hidden.len()
        )));
    }
    if mask.len() != batch * seq {
        return Err(PoolingError::Shape(format!(
            "mask has {} values, expected {batch}×{seq}",
            mask.len()
        )));
    }
    if out.len() != batch * dim {
        return Err(PoolingError::Shape(format!(
            "output has {} values, expected {batch}×{dim}",
            out.len()
        )));
    }
    for b in 0..batch {
        let states = &hidden[b * seq * dim..(b + 1) * seq * dim];
        let keep = &mask[b * seq..(b + 1) * seq];
        let row = &mut out[b * dim..(b + 1) * dim];
        pool_sequence(states, keep, dim, pooling, row);
    }
    Ok(())
}

fn pool_sequence(states: &[f32], keep: &[u32], dim: usize, pooling: Pooling, row: &mut [f32]) {
    let token = |t: usize| &states[t * dim..(t + 1) * dim];
    let kept = || {
        keep.iter()
            .enumerate()
            .filter(|(_, m)| **m != 0)
            .map(|(t, _)| t)
    };
    row.fill(0.0);
    match pooling {
        Pooling::Cls => row.copy_from_slice(token(0)),
        Pooling::LastToken => {
            if let Some(last) = kept().next_back() {
                row.copy_from_slice(token(last));
            }
        }
        Pooling::Max => {
            let mut any = false;
            for t in kept() {
                if any {
                    for (r, v) in row.iter_mut().zip(token(t)) {
                        *r = r.max(*v);
                    }
                } else {
                    row.copy_from_slice(token(t));
                    any = true;
                }
            }
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let mut count = 0usize;
            for t in kept() {
                for (r, v) in row.iter_mut().zip(token(t)) {
                    *r += *v;
                }
                count += 1;
            }
            if count > 0 {
                let divisor = match pooling {
                    Pooling::Mean => count as f32,
                    _ => (count as f32).sqrt(),
                };
                row.iter_mut().for_each(|r| *r /= divisor);
            }
        }
    }
}

/// Scales each `dim`-long row of `rows` to unit L2 norm. A zero row stays
/// zero, as in `torch.nn.functional.normalize`.
pub fn l2_normalize_cpu(rows: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in rows.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        // torch clamps the norm at 1e-12 for the same reason: no division by zero.
        let scale = 1.0 / norm.max(1e-12);
        row.iter_mut().for_each(|v| *v *= scale);
    }
}

/// Pools encoder output `hidden` (`batch × seq × dim`, any float dtype) under
/// `mask` (`batch × seq`) into an f32 `batch × dim` tensor, optionally L2
/// normalised. On a CUDA device the work runs there (kernels/cuda/pooling.cu)
/// and the result stays there; elsewhere it runs on the CPU.
pub fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    pooling: Pooling,
    normalize: bool,
) -> Result<Tensor, PoolingError> {
    let (batch, seq, dim) = hidden.dims3()?;
    let (mask_batch, mask_seq) = mask.dims2()?;
    if (mask_batch, mask_seq) != (batch, seq) {
        return Err(PoolingError::Shape(format!(
            "mask is {mask_batch}×{mask_seq}, hidden states are {batch}×{seq}×{dim}"
        )));
    }
    #[cfg(feature = "cuda")]
    if hidden.device().is_cuda() {
        return cuda::pool(hidden, mask, pooling, normalize);
    }
    // Tensors on devices without a kernel are brought to the CPU, which is
    // correct everywhere.
    let hidden = hidden
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mask = mask
        .to_device(&Device::Cpu)?
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut out = vec![0f32; batch * dim];
    pool_cpu(&hidden, &mask, batch, seq, dim, pooling, &mut out)?;
    if normalize {
        l2_normalize_cpu(&mut out, dim);
    }
    Ok(Tensor::from_vec(out, (batch, dim), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two sequences of three tokens, dim 2; the second keeps only two tokens.
    const HIDDEN: [f32; 12] = [
        1.0, 2.0, 3.0, -4.0, 5.0, 0.0, //
        -1.0, 1.0, 3.0, 3.0, 100.0, 100.0,
    ];
    const MASK: [u32; 6] = [1, 1, 1, 1, 1, 0];

    fn pooled(pooling: Pooling) -> Vec<f32> {
        let mut out = vec![0.0; 4];
        pool_cpu(&HIDDEN, &MASK, 2, 3, 2, pooling, &mut out).unwrap();
        out
    }

    #[test]
    fn mean_ignores_masked_tokens() {
        assert_eq!(pooled(Pooling::Mean), vec![3.0, -2.0 / 3.0, 1.0, 2.0]);
    }

    #[test]
    fn cls_takes_first_token() {
        assert_eq!(pooled(Pooling::Cls), vec![1.0, 2.0, -1.0, 1.0]);
    }

    #[test]
    fn max_ignores_masked_tokens() {
        assert_eq!(pooled(Pooling::Max), vec![5.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn mean_sqrt_len_divides_by_root_of_count() {
        let out = pooled(Pooling::MeanSqrtLen);
        let expected = [
            9.0 / 3f32.sqrt(),
            -2.0 / 3f32.sqrt(),
            2.0 / 2f32.sqrt(),
            4.0 / 2f32.sqrt(),
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn last_token_is_last_kept_token() {
        assert_eq!(pooled(Pooling::LastToken), vec![5.0, 0.0, 3.0, 3.0]);
    }

    #[test]
    fn fully_masked_sequence_pools_to_zero() {
        let mut out = vec![9.0; 2];
        for pooling in Pooling::ALL {
            if pooling == Pooling::Cls {
                continue;
            }
            pool_cpu(&HIDDEN[..6], &[0, 0, 0], 1, 3, 2, pooling, &mut out).unwrap();
            assert_eq!(out, vec![0.0, 0.0], "{pooling}");
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let mut out = vec![0.0; 4];
        assert!(matches!(
            pool_cpu(&HIDDEN, &MASK[..5], 2, 3, 2, Pooling::Mean, &mut out),
            Err(PoolingError::Shape(_))
        ));
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut rows = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_cpu(&mut rows, 2);
        assert_eq!(rows, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn tensor_entry_point_matches_slices() {
        let hidden = Tensor::from_slice(&HIDDEN, (2, 3, 2), &Device::Cpu).unwrap();
        let mask = Tensor::from_slice(&MASK, (2, 3), &Device::Cpu).unwrap();
        let out = pool(&hidden, &mask, Pooling::Mean, true).unwrap();
        let mut expected = pooled(Pooling::Mean);
        l2_normalize_cpu(&mut expected, 2);
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected
        );
    }

    #[test]
    fn parses_sentence_transformers_names() {
        for pooling in Pooling::ALL {
            assert_eq!(pooling.as_str().parse::<Pooling>().unwrap(), pooling);
        }
        assert_eq!("mean_tokens".parse::<Pooling>().unwrap(), Pooling::Mean);
        assert!("weird".parse::<Pooling>().is_err());
    }
}
