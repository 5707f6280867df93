//! CPU kernels of a BERT-family encoder layer on a padding-free batch: the
//! tokens of every sequence packed into one `tokens × hidden` matrix, f32.
//!
//! The dense layers are one matrix multiply over all tokens against weights
//! packed at load ([`crate::matmul`], f32, bf16 or int8). Each multiply task
//! writes the bias (and, where a residual follows, the residual) under its
//! rows before it sums into them, and applies the activation to them after,
//! so neither costs a pass of its own. Attention runs per sequence and head
//! straight on the packed query/key/value matrix (block-diagonal: no
//! padding, no gather). Layer norm runs in place over rows.

use crate::disjoint::DisjointWrites;
pub use crate::matmul::WeightPrecision;
use crate::matmul::{
    Accumulate, Operand, OutputRows, PackedMatrix, each_row_in_parallel, multiply,
};
use crate::vector_math;
use gemm::Parallelism;
use rayon::prelude::*;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransformerError {
    #[error("shape mismatch: {0}")]
    Shape(String),
}

type Result<T> = std::result::Result<T, TransformerError>;

fn expect_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(TransformerError::Shape(format!(
            "{what} holds {len} values, expected {expected}"
        )))
    }
}

/// A linear layer `y = x·Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// W, packed once for the multiply.
    weight: PackedMatrix,
    bias: Vec<f32>,
}

impl Dense {
    /// `weight` is `outputs × inputs` row-major, as PyTorch stores it.
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
        precision: WeightPrecision,
    ) -> Result<Self> {
        expect_len("dense weight", weight.len(), inputs * outputs)?;
        expect_len("dense bias", bias.len(), outputs)?;
        Ok(Dense {
            weight: PackedMatrix::new(weight, inputs, outputs, precision),
            bias,
        })
    }

    pub fn inputs(&self) -> usize {
        self.weight.inputs()
    }

    pub fn outputs(&self) -> usize {
        self.weight.outputs()
    }

    pub fn precision(&self) -> WeightPrecision {
        self.weight.precision()
    }

    /// `out = input·Wᵀ + b (+ residual)` for `input` of `rows × inputs`;
    /// `out` is resized to `rows × outputs`.
    pub fn forward(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.run(input, residual, None, out)
    }

    /// `out = activation(input·Wᵀ + b)`, each block of rows activated as
    /// soon as its sums are done, while it is still in cache.
    pub fn forward_activated(
        &self,
        input: &[f32],
        activation: Activation,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.run(input, None, Some(activation), out)
    }

    fn run(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        activation: Option<Activation>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (inputs, outputs) = (self.inputs(), self.outputs());
        if inputs == 0 || !input.len().is_multiple_of(inputs) {
            return Err(TransformerError::Shape(format!(
                "dense input of {} values is not rows of {inputs}",
                input.len(),
            )));
        }
        let rows = input.len() / inputs;
        if let Some(residual) = residual {
            expect_len("residual", residual.len(), rows * outputs)?;
        }
        resize_for_overwrite(out, rows * outputs);
        let around = BiasThen {
            bias: &self.bias,
            residual,
            activation,
        };
        self.weight.multiply(input, out, &around);
        Ok(())
    }
}

/// Sizes `out` to `len` values that are all about to be overwritten: a
/// buffer kept from an earlier layer or pass is not filled again, and a new
/// one comes zeroed from the allocator, its pages first touched by the
/// threads that write them.
fn resize_for_overwrite(out: &mut Vec<f32>, len: usize) {
    if out.len() == len {
        return;
    }
    if out.capacity() < len {
        *out = vec![0.0; len];
    } else {
        out.truncate(len);
        out.resize(len, 0.0);
    }
}

/// A dense layer's output rows: the bias (plus the residual) under the
/// sums, the activation over them.
struct BiasThen<'a> {
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    activation: Option<Activation>,
}

impl OutputRows for BiasThen<'_> {
    fn start(&self, row: usize, first_column: usize, values: &mut [f32]) {
        let columns = first_column..first_column + values.len();
        let bias = &self.bias[columns.clone()];
        match self.residual {
            Some(residual) => {
                let outputs = self.bias.len();
                let residual = &residual[row * outputs..][columns];
                for ((v, r), b) in values.iter_mut().zip(residual).zip(bias) {
                    *v = r + b;
                }
            }
            None => values.copy_from_slice(bias),
        }
    }

    fn finish(&self, values: &mut [f32]) {
        if let Some(activation) = self.activation {
            activation.apply(values);
        }
    }
}

/// The feed-forward activations BERT-family configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact error function (`gelu` in configs).
    GeluErf,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    /// Applies the activation to every value.
    pub fn apply(self, values: &mut [f32]) {
        match self {
            Activation::GeluErf => vector_math::gelu_erf_in_place(values),
            Activation::GeluTanh => values.iter_mut().for_each(|x| {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let v = *x;
                *x = 0.5 * v * (1.0 + (SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)).tanh());
            }),
            Activation::Relu => vector_math::map_in_place(values, |x| x.max(0.0)),
        }
    }
}

/// Layer normalisation over the last dimension with a learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, eps: f32) -> Result<Self> {
        expect_len("layer norm bias", bias.len(), weight.len())?;
        Ok(LayerNorm { weight, bias, eps })
    }

    /// Normalises each row of `rows` (rows of the weight's length) in place.
    pub fn apply_in_place(&self, rows: &mut [f32]) -> Result<()> {
        let dim = self.weight.len();
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(TransformerError::Shape(format!(
                "layer norm input of {} values is not rows of {dim}",
                rows.len()
            )));
        }
        each_row_in_parallel(rows, dim, |_, row| {
            let mean = vector_math::sum_of(row, |v| v) / dim as f32;
            let variance = vector_math::sum_of(row, |v| (v - mean) * (v - mean)) / dim as f32;
            let inverse = 1.0 / (variance + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inverse * w + b;
            }
        });
        Ok(())
    }
}

/// What attention's two products (queries × keys, probabilities × values)
/// take in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionProducts {
    F32,
    /// bfloat16 inputs summed in f32 on AMX tiles, where the CPU has them
    /// and the head size is a multiple of 32; f32 elsewhere. The encoder's
    /// bf16 and int8 layers take them so.
    Bf16,
}

impl AttentionProducts {
    /// What a layer whose dense weights are in `precision` takes: bf16
    /// for the reduced precisions, whose accuracy budget it fits.
    pub fn for_weights(precision: WeightPrecision) -> Self {
        match precision {
            WeightPrecision::F32 => AttentionProducts::F32,
            WeightPrecision::Bf16 | WeightPrecision::Int8 => AttentionProducts::Bf16,
        }
    }

    /// Whether heads of `head_dim` values run on AMX in this precision here.
    fn on_amx(self, head_dim: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == AttentionProducts::Bf16 {
            return crate::matmul::amx_runs() && crate::matmul::amx::runs_head_dim(head_dim);
        }
        let _ = head_dim;
        false
    }
}

/// Scores added by how far a key sits from its query, one table per head:
/// MPNet's (and T5's) relative position bias, looked up once at load.
#[derive(Debug, Clone)]
pub struct RelativePositionBias {
    /// `heads × (2·longest − 1)`: head h's bias for offset key − query at
    /// `h · (2·longest − 1) + offset + longest − 1`.
    values: Vec<f32>,
    heads: usize,
    longest: usize,
}

impl RelativePositionBias {
    /// The table for sequences of up to `longest` tokens, `bias(head,
    /// offset)` giving each head's bias for offset key − query.
    pub fn new(heads: usize, longest: usize, bias: impl Fn(usize, isize) -> f32) -> Self {
        let reach = longest.saturating_sub(1) as isize;
        let values = (0..heads)
            .flat_map(|head| (-reach..=reach).map(move |offset| (head, offset)))
            .map(|(head, offset)| bias(head, offset))
            .collect();
        RelativePositionBias {
            values,
            heads,
            longest,
        }
    }

    /// Head `head`'s biases of query `query` over keys `0..len`.
    fn row(&self, head: usize, query: usize, len: usize) -> &[f32] {
        let span = 2 * self.longest - 1;
        let start = head * span + (self.longest - 1 - query);
        &self.values[start..start + len]
    }

    /// Every head's bias of every (query, key) of a `seq`-token sequence,
    /// `heads × seq × seq`: what a padded batch's scores take.
    pub fn scores(&self, seq: usize) -> Result<Vec<f32>> {
        self.check(self.heads, &[seq])?;
        let mut values = Vec::with_capacity(self.heads * seq * seq);
        for head in 0..self.heads {
            for query in 0..seq {
                values.extend_from_slice(self.row(head, query, seq));
            }
        }
        Ok(values)
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    fn check(&self, heads: usize, lengths: &[usize]) -> Result<()> {
        if self.heads != heads {
            return Err(TransformerError::Shape(format!(
                "the position bias has {} heads, the attention {heads}",
                self.heads
            )));
        }
        match lengths.iter().find(|&&len| len > self.longest) {
            Some(len) => Err(TransformerError::Shape(format!(
                "a sequence of {len} tokens is longer than the position bias's {}",
                self.longest
            ))),
            None => Ok(()),
        }
    }
}

/// One attention job's working buffers, kept by each thread.
#[derive(Default)]
struct AttentionScratch {
    scores: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    amx: crate::matmul::amx::AttentionScratch,
}

/// Multi-head self-attention over packed sequences.
///
/// `qkv` is `tokens × 3·hidden` (queries, keys, values side by side, heads
/// contiguous within each), the queries already scaled by 1/√head_dim;
/// `lengths` are the sequences' token counts in order, summing to `tokens`.
/// `position_bias`, where the model has one, is added to the scores before
/// the softmax. Writes each token's attended values, heads side by side,
/// into `context` (resized to `tokens × hidden`). A sequence attends only
/// to itself.
pub fn attention(
    qkv: &[f32],
    lengths: &[usize],
    (heads, head_dim): (usize, usize),
    position_bias: Option<&RelativePositionBias>,
    products: AttentionProducts,
    context: &mut Vec<f32>,
) -> Result<()> {
    let hidden = heads * head_dim;
    let tokens: usize = lengths.iter().sum();
    expect_len("packed query/key/value", qkv.len(), tokens * 3 * hidden)?;
    if let Some(bias) = position_bias {
        bias.check(heads, lengths)?;
    }
    resize_for_overwrite(context, tokens * hidden);
    let starts: Vec<usize> = lengths
        .iter()
        .scan(0, |next, &len| {
            let start = *next;
            *next += len;
            Some(start)
        })
        .collect();
    let out = DisjointWrites::new(context);
    let qkv_row = 3 * hidden;
    let on_amx = products.on_amx(head_dim);
    (0..lengths.len() * heads).into_par_iter().for_each_init(
        AttentionScratch::default,
        |scratch, job| {
            let (sequence, head) = (job / heads, job % heads);
            let (start, len) = (starts[sequence], lengths[sequence]);
            if len == 0 {
                return;
            }
            let base = start * 3 * hidden + head * head_dim;
            let softmax = |query: usize, scores: &mut [f32]| {
                if let Some(bias) = position_bias {
                    for (score, bias) in scores.iter_mut().zip(bias.row(head, query, len)) {
                        *score += bias;
                    }
                }
                softmax_in_place(scores);
            };
            #[cfg(target_arch = "x86_64")]
            if on_amx {
                use crate::matmul::amx::{Rows, attention_job};
                let part = |offset: usize| Rows {
                    at: qkv[base + offset..].as_ptr(),
                    stride: qkv_row,
                };
                let out = Rows {
                    at: out.at(start * hidden + head * head_dim),
                    stride: hidden,
                };
                // SAFETY: AMX and AVX-512 BF16 run here and the head size
                // is whole steps (`on_amx`); rows start..start+len of `qkv`
                // exist and each head's columns lie inside a row; the
                // context block is this job's alone (as below).
                unsafe {
                    attention_job(
                        len,
                        head_dim,
                        (part(0), part(hidden), part(2 * hidden)),
                        out,
                        &mut scratch.amx,
                        softmax,
                    )
                };
                return;
            }
            let scores = &mut scratch.scores;
            // gemm writes every score without reading the buffer, so it only
            // grows, and is never cleared.
            if scores.len() < len * len {
                scores.resize(len * len, 0.0);
            }
            let scores = &mut scores[..len * len];
            let (queries, keys, values) = (
                &qkv[base..],
                &qkv[base + hidden..],
                &qkv[base + 2 * hidden..],
            );
            // SAFETY: rows start..start+len of `qkv` exist (its length was
            // checked against the lengths' sum), and each head's columns lie
            // inside a row: queries, keys and values are read with row stride
            // 3·hidden and head_dim columns from their offsets; `scores` is
            // len × len. The context block (rows start..start+len, columns
            // head·head_dim..+head_dim) belongs to this (sequence, head) job
            // alone, so no two tasks write the same value.
            unsafe {
                multiply(
                    (len, len, head_dim),
                    Operand::row_major(scores.as_mut_ptr(), len),
                    Accumulate::No,
                    Operand::row_major(queries.as_ptr(), qkv_row),
                    // Keys read transposed: head_dim × len.
                    Operand::column_major(keys.as_ptr(), qkv_row),
                    Parallelism::None,
                );
                for (query, row) in scores.chunks_exact_mut(len).enumerate() {
                    softmax(query, row);
                }
                multiply(
                    (len, head_dim, len),
                    Operand::row_major(out.at(start * hidden + head * head_dim), hidden),
                    Accumulate::No,
                    Operand::row_major(scores.as_ptr(), len),
                    Operand::row_major(values.as_ptr(), qkv_row),
                    Parallelism::None,
                );
            }
        },
    );
    Ok(())
}

fn softmax_in_place(row: &mut [f32]) {
    let max = vector_math::reduce(row, f32::NEG_INFINITY, |a, b| if a > b { a } else { b });
    let inverse = 1.0 / vector_math::exp_shifted_in_place(row, max);
    vector_math::map_in_place(row, move |v| v * inverse);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_values::values;

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tolerance, "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn dense_adds_bias_and_residual() {
        let (inputs, outputs, rows) = (37, 70, 33);
        let weight = values(inputs * outputs, 1);
        let bias = values(outputs, 2);
        let input = values(rows * inputs, 3);
        let residual = values(rows * outputs, 4);
        let dense =
            Dense::new(&weight, bias.clone(), inputs, outputs, WeightPrecision::F32).unwrap();
        let mut out = Vec::new();
        dense.forward(&input, Some(&residual), &mut out).unwrap();
        let mut expected = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let dot: f32 = (0..inputs)
                    .map(|i| input[r * inputs + i] * weight[o * inputs + i])
                    .sum();
                expected[r * outputs + o] = dot + bias[o] + residual[r * outputs + o];
            }
        }
        assert_close(&out, &expected, 1e-4);
        dense.forward(&input, None, &mut out).unwrap();
        for (e, r) in expected.iter_mut().zip(&residual) {
            *e -= r;
        }
        assert_close(&out, &expected, 1e-4);
    }

    #[test]
    fn dense_activates_what_it_computes() {
        // Big enough to run in parallel tasks.
        let (inputs, outputs, rows) = (96, 200, 150);
        let weight = values(inputs * outputs, 5);
        let bias = values(outputs, 6);
        let input = values(rows * inputs, 7);
        let dense = Dense::new(&weight, bias, inputs, outputs, WeightPrecision::F32).unwrap();
        for activation in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            let mut expected = Vec::new();
            dense.forward(&input, None, &mut expected).unwrap();
            activation.apply(&mut expected);
            // A buffer of another size, as a previous layer leaves it.
            let mut out = vec![f32::NAN; 7];
            dense
                .forward_activated(&input, activation, &mut out)
                .unwrap();
            assert_eq!(out, expected, "{activation:?}");
        }
    }

    #[test]
    fn dense_rejects_ragged_input() {
        let dense = Dense::new(&[0.0; 6], vec![0.0; 2], 3, 2, WeightPrecision::F32).unwrap();
        let mut out = Vec::new();
        assert!(dense.forward(&[1.0; 4], None, &mut out).is_err());
        assert!(dense.forward(&[1.0; 3], Some(&[0.0; 3]), &mut out).is_err());
        assert!(Dense::new(&[0.0; 5], vec![0.0; 2], 3, 2, WeightPrecision::F32).is_err());
    }

    #[test]
    fn activations_match_their_definitions() {
        let mut x = vec![-3.0, -0.5, 0.0, 0.7, 2.0];
        Activation::GeluErf.apply(&mut x);
        // GELU(x) = x·Φ(x), Φ from the error function in f64.
        let expected: Vec<f32> = [-3.0f64, -0.5, 0.0, 0.7, 2.0]
            .iter()
            .map(|&v| (v * 0.5 * (1.0 + libm::erf(v / 2f64.sqrt()))) as f32)
            .collect();
        assert_close(&x, &expected, 5e-7);
        let mut y = vec![-1.0, 1.0];
        Activation::GeluTanh.apply(&mut y);
        assert_close(&y, &[-0.158_808, 0.841_192], 1e-5);
        let mut z = vec![-1.0, 2.0];
        Activation::Relu.apply(&mut z);
        assert_eq!(z, vec![0.0, 2.0]);
    }

    #[test]
    fn layer_norm_centres_and_scales_rows() {
        let norm = LayerNorm::new(vec![2.0, 2.0, 2.0, 2.0], vec![1.0; 4], 0.0).unwrap();
        let mut rows = vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 7.0];
        norm.apply_in_place(&mut rows).unwrap();
        // Row 1: mean 2.5, variance 1.25; row 2: mean 5.5, variance 0.75.
        let (s, t) = (1.25f32.sqrt(), 0.75f32.sqrt());
        let expected = [
            1.0 - 3.0 / s,
            1.0 - 1.0 / s,
            1.0 + 1.0 / s,
            1.0 + 3.0 / s,
            1.0 - 1.0 / t,
            1.0 - 1.0 / t,
            1.0 - 1.0 / t,
            1.0 + 3.0 / t,
        ];
        assert_close(&rows, &expected, 1e-5);
        assert!(norm.apply_in_place(&mut [0.0; 6]).is_err());
    }

    /// Attention of one sequence and head, written out the long way, with
    /// `bias(offset)` added to each score.
    fn naive_attention(
        q: &[Vec<f32>],
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        bias: impl Fn(isize) -> f32,
    ) -> Vec<Vec<f32>> {
        q.iter()
            .enumerate()
            .map(|(i, qi)| {
                let scores: Vec<f32> = k
                    .iter()
                    .enumerate()
                    .map(|(j, kj)| {
                        let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                        dot + bias(j as isize - i as isize)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                (0..v[0].len())
                    .map(|d| weights.iter().zip(v).map(|(w, vj)| w * vj[d]).sum::<f32>() / total)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn attention_keeps_sequences_apart() {
        // Heads narrower than a panel, and heads and sequences spanning
        // several panels and strips.
        // Heads of 32 and 64 run on AMX in bf16 where the CPU has it:
        // partial tiles of queries and keys, odd key counts.
        let shapes: [(usize, usize, &[usize]); 4] = [
            (3, 5, &[4, 1, 0, 9]),
            (2, 20, &[37, 3]),
            (3, 32, &[1, 17, 0, 40, 33]),
            (2, 64, &[70, 16, 5]),
        ];
        if !AttentionProducts::Bf16.on_amx(32) {
            eprintln!("skipped: attention on AMX (no AMX, or Linux refused its tiles)");
        }
        // bf16 rounds each query, key, probability and value to 2⁻⁹ of
        // itself; the outputs are weighted means of values in [-1, 1].
        let runs = [
            (AttentionProducts::F32, 1e-5),
            (AttentionProducts::Bf16, 2e-2),
        ];
        // Without a position bias, and with one as large as the scores.
        let bias_of = |head: usize, offset: isize| ((head * 7) as f32 + offset as f32 * 0.37).sin();
        for (((heads, head_dim, lengths), (products, tolerance)), biased) in shapes
            .into_iter()
            .flat_map(|shape| runs.map(|run| (shape, run)))
            .flat_map(|case| [(case, false), (case, true)])
        {
            let hidden = heads * head_dim;
            let tokens: usize = lengths.iter().sum();
            let qkv = values(tokens * 3 * hidden, 7);
            let longest = lengths.iter().copied().max().unwrap_or(0);
            let table = RelativePositionBias::new(heads, longest, bias_of);
            let position_bias = biased.then_some(&table);
            // A buffer kept from an earlier layer: every value must be
            // written.
            let mut context = vec![f32::NAN; tokens * hidden];
            let shape = (heads, head_dim);
            attention(&qkv, lengths, shape, position_bias, products, &mut context).unwrap();
            let mut start = 0;
            for &len in lengths {
                for head in 0..heads {
                    let part = |which: usize| -> Vec<Vec<f32>> {
                        (start..start + len)
                            .map(|t| {
                                let at = t * 3 * hidden + which * hidden + head * head_dim;
                                qkv[at..at + head_dim].to_vec()
                            })
                            .collect()
                    };
                    let bias = |offset| if biased { bias_of(head, offset) } else { 0.0 };
                    let expected = naive_attention(&part(0), &part(1), &part(2), bias);
                    for (i, row) in expected.iter().enumerate() {
                        let at = (start + i) * hidden + head * head_dim;
                        assert_close(&context[at..at + head_dim], row, tolerance);
                    }
                }
                start += len;
            }
            let broken = &qkv[1..];
            assert!(attention(broken, lengths, shape, None, products, &mut context).is_err());
        }
    }

    #[test]
    fn position_bias_scores_lay_out_every_head_query_and_key() {
        let bias =
            RelativePositionBias::new(2, 4, |head, offset| (head * 10) as f32 + offset as f32);
        let scores = bias.scores(3).unwrap();
        #[rustfmt::skip]
        let expected = [
            0.0, 1.0, 2.0, -1.0, 0.0, 1.0, -2.0, -1.0, 0.0,
            10.0, 11.0, 12.0, 9.0, 10.0, 11.0, 8.0, 9.0, 10.0,
        ];
        assert_eq!(scores, expected);
        assert!(bias.scores(5).is_err());
    }

    #[test]
    fn position_bias_must_cover_every_sequence_and_head() {
        let (heads, head_dim, lengths) = (2, 4, [3, 5]);
        let qkv = values(8 * 3 * heads * head_dim, 1);
        let mut context = Vec::new();
        let mut run = |bias: &RelativePositionBias| {
            let products = AttentionProducts::F32;
            attention(
                &qkv,
                &lengths,
                (heads, head_dim),
                Some(bias),
                products,
                &mut context,
            )
        };
        assert!(run(&RelativePositionBias::new(2, 5, |_, _| 0.0)).is_ok());
        assert!(run(&RelativePositionBias::new(2, 4, |_, _| 0.0)).is_err());
        assert!(run(&RelativePositionBias::new(3, 5, |_, _| 0.0)).is_err());
    }
}
