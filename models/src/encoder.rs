//! The transformer encoders: pulse's own BERT-family encoder, and Candle's
//! stock `BertModel` kept as the reference it is checked and measured against.

use crate::config::{Architecture, ModelConfig};
use crate::device::{Precision, device_name};
use crate::error::{ModelError, Result};
use crate::source::{PYTORCH_FILE, SAFETENSORS_FILE};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{self, BertModel, HiddenAct};
use pulse_kernels::transformer::{
    self as kernels, Activation, AttentionProducts, Dense, RelativePositionBias, WeightPrecision,
};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

/// Which implementation runs the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderKind {
    /// pulse's encoder: BERT, XLM-RoBERTa and MPNet, any dtype.
    #[default]
    Native,
    /// candle-transformers' `BertModel`: BERT only, f32 only (its attention
    /// mask overflows to NaN in f16/bf16).
    CandleReference,
}

impl FromStr for EncoderKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "native" => Ok(EncoderKind::Native),
            "candle" | "candle-reference" => Ok(EncoderKind::CandleReference),
            other => Err(format!(
                "unknown encoder `{other}` (expected native or candle)"
            )),
        }
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncoderKind::Native => "native",
            EncoderKind::CandleReference => "candle",
        })
    }
}

/// A padded batch on the encoder's device: ids, token types and mask are
/// `batch × seq` u32; positions follow the architecture's convention.
/// `lengths` (each sequence's token count) and `packing` are the host's
/// copy of what the mask says, so no forward pass reads the mask back.
pub(crate) struct EncoderInput {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    lengths: Vec<usize>,
    packing: Option<Packing>,
}

pub(crate) enum Encoder {
    Native(NativeEncoder),
    CandleReference(Box<BertModel>),
}

impl Encoder {
    pub(crate) fn load(
        dir: &Path,
        config: &ModelConfig,
        kind: EncoderKind,
        precision: Precision,
        device: &Device,
    ) -> Result<(Self, usize)> {
        let vb = open_weights(dir, precision.dtype, device)?;
        let prefix = weight_prefix(&vb).ok_or_else(|| ModelError::InvalidConfig {
            path: dir.to_path_buf(),
            message: "the weights hold no `embeddings.word_embeddings.weight` (under no prefix, `bert.`, `roberta.`, `mpnet.` or `model.`)".into(),
        })?;
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
        let encoder = match kind {
            EncoderKind::Native => {
                Encoder::Native(NativeEncoder::load(vb, config, precision.dense_weights)?)
            }
            EncoderKind::CandleReference => {
                let f32_only = precision.dtype == DType::F32
                    && precision.dense_weights == WeightPrecision::F32;
                if config.architecture != Architecture::Bert || !f32_only {
                    return Err(ModelError::InvalidConfig {
                        path: dir.to_path_buf(),
                        message: format!(
                            "the candle reference encoder runs bert in f32 only, not {} in {}",
                            config.architecture,
                            precision.name()
                        ),
                    });
                }
                Encoder::CandleReference(Box::new(BertModel::load(vb, &config.encoder)?))
            }
        };
        Ok((encoder, parameter_count(config)))
    }

    /// What the dense layers run on (see `ModelInfo::kernels`).
    pub(crate) fn kernels(&self) -> &'static str {
        match self {
            Encoder::Native(encoder) => match encoder.cpu_kernels() {
                Some(precision) => pulse_kernels::matmul::kernel_path(precision),
                None => "candle",
            },
            Encoder::CandleReference(_) => "candle",
        }
    }

    /// Token states, `batch × seq × hidden`.
    pub(crate) fn forward(&self, input: &EncoderInput) -> Result<Tensor> {
        Ok(match self {
            Encoder::Native(encoder) => encoder.forward(input)?,
            Encoder::CandleReference(model) => {
                model.forward(&input.ids, &input.type_ids, Some(&input.mask))?
            }
        })
    }
}

fn open_weights(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let safetensors = dir.join(SAFETENSORS_FILE);
    let pytorch = dir.join(PYTORCH_FILE);
    if safetensors.is_file() {
        // SAFETY: the file is mapped read-only; like every mmap user, pulse
        // assumes nobody truncates a model file while it is loaded.
        Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[safetensors], dtype, device)? })
    } else if pytorch.is_file() {
        Ok(VarBuilder::from_pth(&pytorch, dtype, device)?)
    } else {
        Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: "model.safetensors (or pytorch_model.bin)",
        })
    }
}

/// Checkpoints saved from a task model nest the encoder under a prefix.
fn weight_prefix(vb: &VarBuilder) -> Option<&'static str> {
    ["", "bert", "roberta", "mpnet", "model"]
        .into_iter()
        .find(|prefix| {
            let name = "embeddings.word_embeddings.weight";
            if prefix.is_empty() {
                vb.contains_tensor(name)
            } else {
                vb.contains_tensor(&format!("{prefix}.{name}"))
            }
        })
}

/// Parameters of the encoder as configured (the pooler head is not run and not counted).
fn parameter_count(config: &ModelConfig) -> usize {
    let c = &config.encoder;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
    let layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
    let position_bias = config.relative_attention_buckets.unwrap_or(0) * c.num_attention_heads;
    embeddings + c.num_hidden_layers * layer + position_bias
}

/// Builds the padded batch tensors for `sequences` (each `(ids, type_ids)`).
pub(crate) fn batch_input(
    sequences: &[(&[u32], &[u32])],
    config: &ModelConfig,
    device: &Device,
) -> Result<EncoderInput> {
    let batch = sequences.len();
    let seq = sequences
        .iter()
        .map(|(ids, _)| ids.len())
        .max()
        .unwrap_or(0);
    let pad_id = config.encoder.pad_token_id as u32;
    let mut ids = vec![pad_id; batch * seq];
    let mut type_ids = vec![0u32; batch * seq];
    let mut mask = vec![0u32; batch * seq];
    let mut positions = vec![0u32; batch * seq];
    for (row, (seq_ids, seq_types)) in sequences.iter().enumerate() {
        let start = row * seq;
        ids[start..start + seq_ids.len()].copy_from_slice(seq_ids);
        type_ids[start..start + seq_types.len()].copy_from_slice(seq_types);
        mask[start..start + seq_ids.len()].fill(1);
        for (t, position) in positions[start..start + seq].iter_mut().enumerate() {
            *position = match config.architecture {
                Architecture::Bert => t as u32,
                // RoBERTa counts positions from pad + 1 and gives padding the
                // pad position.
                Architecture::XlmRoberta | Architecture::Mpnet if t < seq_ids.len() => {
                    pad_id + 1 + t as u32
                }
                Architecture::XlmRoberta | Architecture::Mpnet => pad_id,
            };
        }
    }
    let lengths: Vec<usize> = sequences.iter().map(|(ids, _)| ids.len()).collect();
    let packing = Packing::of(&lengths, seq, device)?;
    let tensor = |v: Vec<u32>| Tensor::from_vec(v, (batch, seq), device);
    Ok(EncoderInput {
        ids: tensor(ids)?,
        type_ids: tensor(type_ids)?,
        positions: tensor(positions)?,
        mask: tensor(mask)?,
        lengths,
        packing,
    })
}

/// A BERT-family encoder with an additive attention mask that stays finite
/// in every dtype. Its layers run on the real tokens alone: in f32 on the CPU
/// through pulse-kernels' packed layer, elsewhere through Candle's ops.
pub(crate) struct NativeEncoder {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Option<Embedding>,
    embedding_norm: LayerNorm,
    /// MPNet's; boxed, as no other model has one.
    position_bias: Option<Box<RelativePositionBias>>,
    layers: Layers,
    heads: usize,
    head_dim: usize,
    activation: HiddenAct,
}

enum Layers {
    /// Candle tensors: any device and dtype.
    Tensors(Vec<EncoderLayer>),
    /// Host f32 weights for pulse-kernels' CPU layer.
    Cpu(CpuLayers),
}

struct CpuLayers {
    layers: Vec<CpuLayer>,
    /// Working buffers of earlier passes, for the next ones to reuse.
    spare: Mutex<Vec<LayerBuffers>>,
}

/// The CPU layers' working values, kept from one forward pass to the next:
/// fresh, a 16 × 256-token batch's buffers were 56 MB of pages to fault in,
/// zero and hand back on every pass.
#[derive(Default)]
struct LayerBuffers {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    intermediate: Vec<f32>,
}

/// Buffers larger than this together are dropped after their pass instead
/// of kept, so that one huge batch does not pin its memory for good.
const KEPT_BUFFER_BYTES: usize = 256 << 20;

impl LayerBuffers {
    fn bytes(&self) -> usize {
        let values = self.qkv.capacity()
            + self.context.capacity()
            + self.attended.capacity()
            + self.intermediate.capacity();
        values * size_of::<f32>()
    }
}

/// MPNet's relative position bias: the checkpoint's value per bucket and
/// head, spread at load into a table per head and offset, which the CPU
/// layers and the Candle path both read.
fn mpnet_position_bias(
    vb: VarBuilder,
    buckets: usize,
    heads: usize,
    longest: usize,
) -> Result<RelativePositionBias> {
    let weights = vb
        .get((buckets, heads), "relative_attention_bias.weight")?
        .to_dtype(DType::F32)?;
    let weights = host_values(&weights)?;
    Ok(RelativePositionBias::new(heads, longest, |head, offset| {
        weights[mpnet_bucket(offset, buckets) * heads + head]
    }))
}

/// MPNet's bucket for a key `offset` places after its query (before, where
/// negative): half the buckets each way, one per place up to a quarter of
/// them, then logarithmic in the distance up to 128 places. Computed in f32
/// as MPNet's PyTorch code does, so that distances on a bucket's edge fall
/// the same way.
fn mpnet_bucket(offset: isize, buckets: usize) -> usize {
    const MAX_DISTANCE: usize = 128;
    let half = buckets / 2;
    let exact = half / 2;
    let side = if offset > 0 { half } else { 0 };
    let distance = offset.unsigned_abs();
    if distance < exact {
        return side + distance;
    }
    let range = ((MAX_DISTANCE as f64 / exact as f64).ln()) as f32;
    let beyond = (distance as f32 / exact as f32).ln() / range * (half - exact) as f32;
    side + (exact + beyond as usize).min(half - 1)
}

struct EncoderLayer {
    /// Query, key and value projections stacked into one matrix multiply.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// [`EncoderLayer`] in host memory, its query projection pre-scaled by
/// 1/√head_dim so attention's softmax takes the scores as they come.
struct CpuLayer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: kernels::LayerNorm,
    intermediate: Dense,
    activation: Activation,
    output: Dense,
    output_norm: kernels::LayerNorm,
}

/// Taken off the attention scores of padding: far beyond any real score gap,
/// yet finite in f16, so the bias never turns into NaN.
const PADDING_PENALTY: f64 = 10_000.0;

impl NativeEncoder {
    /// The precision of the dense weights when pulse-kernels' CPU layer
    /// runs them.
    fn cpu_kernels(&self) -> Option<WeightPrecision> {
        match &self.layers {
            Layers::Cpu(cpu) => cpu.layers.first().map(|layer| layer.qkv.precision()),
            Layers::Tensors(_) => None,
        }
    }

    /// Bf16 and int8 `dense_weights` need the CPU layer, hence f32 on the
    /// CPU.
    fn load(vb: VarBuilder, config: &ModelConfig, dense_weights: WeightPrecision) -> Result<Self> {
        let kernels = vb.device().is_cpu() && vb.dtype() == DType::F32;
        if !kernels && dense_weights != WeightPrecision::F32 {
            return Err(ModelError::UnsupportedDType {
                dtype: dense_weights.name().into(),
                device: device_name(vb.device()),
            });
        }
        Self::load_with(vb, config, kernels.then_some(dense_weights))
    }

    /// `cpu_kernels`: run the layers through pulse-kernels (f32 on the CPU
    /// only), their dense weights held in this precision, rather than
    /// Candle's ops.
    fn load_with(
        vb: VarBuilder,
        config: &ModelConfig,
        cpu_kernels: Option<WeightPrecision>,
    ) -> Result<Self> {
        let c: &bert::Config = &config.encoder;
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "{} with hidden size {} not divisible into {} heads",
                config.model_type, c.hidden_size, c.num_attention_heads
            )));
        }
        let h = c.hidden_size;
        let heads = c.num_attention_heads;
        let emb = vb.pp("embeddings");
        let token_type_embeddings = if c.type_vocab_size > 0 {
            Some(candle_nn::embedding(
                c.type_vocab_size,
                h,
                emb.pp("token_type_embeddings"),
            )?)
        } else {
            None
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                EncoderLayer::load(vb.pp(format!("encoder.layer.{i}")), c, config.architecture)
            })
            .collect::<Result<Vec<_>>>()?;
        let position_bias = match config.relative_attention_buckets {
            Some(buckets) => Some(Box::new(mpnet_position_bias(
                vb.pp("encoder"),
                buckets,
                heads,
                config.max_seq_length,
            )?)),
            None => None,
        };
        let layers = match cpu_kernels {
            Some(dense_weights) => Layers::Cpu(CpuLayers {
                layers: layers
                    .iter()
                    .map(|layer| layer.to_cpu(heads, c.hidden_act, dense_weights))
                    .collect::<Result<_>>()?,
                spare: Mutex::default(),
            }),
            None => Layers::Tensors(layers),
        };
        Ok(NativeEncoder {
            word_embeddings: candle_nn::embedding(c.vocab_size, h, emb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                c.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            token_type_embeddings,
            embedding_norm: candle_nn::layer_norm(h, c.layer_norm_eps, emb.pp("LayerNorm"))?,
            position_bias,
            layers,
            heads,
            head_dim: h / heads,
            activation: c.hidden_act,
        })
    }

    fn forward(&self, input: &EncoderInput) -> Result<Tensor> {
        let (batch, seq) = input.ids.dims2()?;
        let hidden_size = self.heads * self.head_dim;
        let mut hidden = self.word_embeddings.forward(&input.ids)?;
        hidden = (hidden + self.position_embeddings.forward(&input.positions)?)?;
        if let Some(token_types) = &self.token_type_embeddings {
            hidden = (hidden + token_types.forward(&input.type_ids)?)?;
        }
        // Dense layers run on a flat (tokens × hidden) matrix, of the real
        // tokens alone when the batch has padding.
        let mut hidden = self
            .embedding_norm
            .forward(&hidden)?
            .reshape((batch * seq, hidden_size))?;
        let packing = input.packing.as_ref();
        if let Some(packing) = packing {
            hidden = hidden.index_select(&packing.tokens, 0)?;
        }
        hidden = match &self.layers {
            Layers::Cpu(layers) => self.cpu_layers_forward(layers, hidden, &input.lengths)?,
            Layers::Tensors(layers) => {
                let dtype = hidden.dtype();
                // (mask - 1) × penalty: 0 for tokens, -penalty for padding,
                // shaped to broadcast over heads and query positions.
                let mut score_bias = ((input.mask.to_dtype(DType::F32)? - 1.0)? * PADDING_PENALTY)?
                    .to_dtype(dtype)?
                    .reshape((batch, 1, 1, seq))?;
                if let Some(position_bias) = &self.position_bias {
                    let heads = position_bias.heads();
                    let positions = Tensor::from_vec(
                        position_bias.scores(seq)?,
                        (1, heads, seq, seq),
                        hidden.device(),
                    )?
                    .to_dtype(dtype)?;
                    score_bias = score_bias.broadcast_add(&positions)?;
                }
                for layer in layers {
                    hidden =
                        self.layer_forward(layer, &hidden, &score_bias, packing, batch, seq)?;
                }
                hidden
            }
        };
        if let Some(packing) = packing {
            hidden = hidden.index_select(&packing.slots, 0)?;
        }
        Ok(hidden.reshape((batch, seq, hidden_size))?)
    }

    /// Runs `layers` on the packed `tokens × hidden` f32 states of sequences
    /// of `lengths` tokens.
    fn cpu_layers_forward(
        &self,
        layers: &CpuLayers,
        hidden: Tensor,
        lengths: &[usize],
    ) -> Result<Tensor> {
        let shape = hidden.shape().clone();
        let mut hidden = hidden.flatten_all()?.to_vec1::<f32>()?;
        // A poisoned lock only means another pass panicked; the buffers
        // hold no state that matters.
        let spare = || layers.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buffers = spare().pop().unwrap_or_default();
        let LayerBuffers {
            qkv,
            context,
            attended,
            intermediate,
        } = &mut buffers;
        for layer in &layers.layers {
            layer.qkv.forward(&hidden, None, qkv)?;
            let products = AttentionProducts::for_weights(layer.qkv.precision());
            let position_bias = self.position_bias.as_deref();
            let shape = (self.heads, self.head_dim);
            kernels::attention(qkv, lengths, shape, position_bias, products, context)?;
            layer
                .attention_out
                .forward(context, Some(&hidden), attended)?;
            layer.attention_norm.apply_in_place(attended)?;
            layer
                .intermediate
                .forward_activated(attended, layer.activation, intermediate)?;
            layer
                .output
                .forward(intermediate, Some(attended), &mut hidden)?;
            layer.output_norm.apply_in_place(&mut hidden)?;
        }
        if buffers.bytes() <= KEPT_BUFFER_BYTES {
            spare().push(buffers);
        }
        Ok(Tensor::from_vec(hidden, shape, &Device::Cpu)?)
    }

    fn layer_forward(
        &self,
        layer: &EncoderLayer,
        hidden: &Tensor,
        score_bias: &Tensor,
        packing: Option<&Packing>,
        batch: usize,
        seq: usize,
    ) -> candle_core::Result<Tensor> {
        let (heads, head_dim) = (self.heads, self.head_dim);
        let mut qkv = layer.qkv.forward(hidden)?;
        // Attention runs per sequence on the padded layout: padding is
        // masked out of the keys, and its query rows are dropped after.
        if let Some(packing) = packing {
            qkv = qkv.index_select(&packing.slots, 0)?;
        }
        let qkv = qkv
            .reshape((batch, seq, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?; // 3 × batch × heads × seq × head_dim
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(score_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let mut context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch * seq, heads * head_dim))?;
        if let Some(packing) = packing {
            context = context.index_select(&packing.tokens, 0)?;
        }
        let attended = layer
            .attention_norm
            .forward(&(layer.attention_out.forward(&context)? + hidden)?)?;
        let intermediate = layer.intermediate.forward(&attended)?;
        let activated = match self.activation {
            HiddenAct::Gelu => intermediate.gelu_erf()?,
            HiddenAct::GeluApproximate => intermediate.gelu()?,
            HiddenAct::Relu => intermediate.relu()?,
        };
        layer
            .output_norm
            .forward(&(layer.output.forward(&activated)? + attended)?)
    }
}

/// Where a padded batch's real tokens are: the dense layers run on those
/// rows alone, so a batch of one long and many short texts costs what its
/// tokens cost.
struct Packing {
    /// Row in the padded (batch × seq) layout of each real token, in order.
    tokens: Tensor,
    /// Row in the packed layout for each padded slot; padding points at row
    /// 0, whose values are masked or dropped wherever they land.
    slots: Tensor,
}

impl Packing {
    /// `None` when nothing is padded.
    fn of(lengths: &[usize], seq: usize, device: &Device) -> candle_core::Result<Option<Packing>> {
        if lengths.iter().all(|&len| len == seq) {
            return Ok(None);
        }
        let mut tokens = Vec::with_capacity(lengths.iter().sum());
        let mut slots = vec![0u32; lengths.len() * seq];
        for (row, &len) in lengths.iter().enumerate() {
            for t in 0..len {
                slots[row * seq + t] = tokens.len() as u32;
                tokens.push((row * seq + t) as u32);
            }
        }
        let (tokens_len, slots_len) = (tokens.len(), slots.len());
        Ok(Some(Packing {
            tokens: Tensor::from_vec(tokens, tokens_len, device)?,
            slots: Tensor::from_vec(slots, slots_len, device)?,
        }))
    }
}

impl EncoderLayer {
    /// Reads layer weights as BERT names them (`attention.self.query`,
    /// `attention.output.dense`, …) or as MPNet does (`attention.attn.q`,
    /// `attention.attn.o`, `attention.LayerNorm`).
    fn load(vb: VarBuilder, c: &bert::Config, architecture: Architecture) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attention = vb.pp("attention");
        let (projections, [query, key, value, out], norm) = match architecture {
            Architecture::Bert | Architecture::XlmRoberta => (
                attention.pp("self"),
                ["query", "key", "value", "dense"],
                attention.pp("output").pp("LayerNorm"),
            ),
            Architecture::Mpnet => (
                attention.pp("attn"),
                ["q", "k", "v", "o"],
                attention.pp("LayerNorm"),
            ),
        };
        let attention_out = match architecture {
            Architecture::Bert | Architecture::XlmRoberta => attention.pp("output").pp(out),
            Architecture::Mpnet => projections.pp(out),
        };
        let projection = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
            let vb = projections.pp(name);
            Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
        };
        let (qw, qb) = projection(query)?;
        let (kw, kb) = projection(key)?;
        let (vw, vb_) = projection(value)?;
        let qkv = Linear::new(
            Tensor::cat(&[qw, kw, vw], 0)?,
            Some(Tensor::cat(&[qb, kb, vb_], 0)?),
        );
        Ok(EncoderLayer {
            qkv,
            attention_out: candle_nn::linear(h, h, attention_out)?,
            attention_norm: candle_nn::layer_norm(h, eps, norm)?,
            intermediate: candle_nn::linear(h, i, vb.pp("intermediate").pp("dense"))?,
            output: candle_nn::linear(i, h, vb.pp("output").pp("dense"))?,
            output_norm: candle_nn::layer_norm(h, eps, vb.pp("output").pp("LayerNorm"))?,
        })
    }

    /// Copies the f32 weights to the host for the CPU layer, the dense ones
    /// packed in `dense_weights`.
    fn to_cpu(
        &self,
        heads: usize,
        activation: HiddenAct,
        dense_weights: WeightPrecision,
    ) -> Result<CpuLayer> {
        let dense = |linear, query_scale| dense_on_host(linear, dense_weights, query_scale);
        let hidden = self.qkv.weight().dim(1)?;
        // Attention's 1/√head_dim, folded into the query projection in f32
        // before the weights are packed (and rounded, in bf16 or int8).
        let query_scale = QueryScale {
            outputs: hidden,
            factor: 1.0 / ((hidden / heads) as f32).sqrt(),
        };
        Ok(CpuLayer {
            qkv: dense(&self.qkv, Some(query_scale))?,
            attention_out: dense(&self.attention_out, None)?,
            attention_norm: layer_norm_on_host(&self.attention_norm)?,
            intermediate: dense(&self.intermediate, None)?,
            activation: match activation {
                HiddenAct::Gelu => Activation::GeluErf,
                HiddenAct::GeluApproximate => Activation::GeluTanh,
                HiddenAct::Relu => Activation::Relu,
            },
            output: dense(&self.output, None)?,
            output_norm: layer_norm_on_host(&self.output_norm)?,
        })
    }
}

fn host_values(tensor: &Tensor) -> candle_core::Result<Vec<f32>> {
    tensor.flatten_all()?.to_vec1::<f32>()
}

/// The first `outputs` of a layer, to be multiplied by `factor`.
#[derive(Clone, Copy)]
struct QueryScale {
    outputs: usize,
    factor: f32,
}

fn dense_on_host(
    linear: &Linear,
    precision: WeightPrecision,
    scale: Option<QueryScale>,
) -> Result<Dense> {
    let (outputs, inputs) = linear.weight().dims2()?;
    let mut bias = match linear.bias() {
        Some(bias) => host_values(bias)?,
        None => vec![0.0; outputs],
    };
    let mut weight = host_values(linear.weight())?;
    if let Some(QueryScale { outputs, factor }) = scale {
        for w in &mut weight[..outputs * inputs] {
            *w *= factor;
        }
        for b in &mut bias[..outputs] {
            *b *= factor;
        }
    }
    Ok(Dense::new(&weight, bias, inputs, outputs, precision)?)
}

fn layer_norm_on_host(norm: &LayerNorm) -> Result<kernels::LayerNorm> {
    let weight = host_values(norm.weight())?;
    let bias = match norm.bias() {
        Some(bias) => host_values(bias)?,
        None => vec![0.0; weight.len()],
    };
    Ok(kernels::LayerNorm::new(weight, bias, norm.eps() as f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_kernels::Pooling;
    use std::collections::HashMap;

    const HIDDEN: usize = 24;
    const INTERMEDIATE: usize = 40;
    const VOCAB: usize = 50;

    const BUCKETS: usize = 8;

    fn tiny_config() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Bert,
            model_type: "bert".into(),
            encoder: bert::Config {
                vocab_size: VOCAB,
                hidden_size: HIDDEN,
                num_hidden_layers: 2,
                num_attention_heads: 3,
                intermediate_size: INTERMEDIATE,
                max_position_embeddings: 32,
                ..bert::Config::default()
            },
            pooling: Pooling::Mean,
            normalize: true,
            max_seq_length: 32,
            do_lower_case: false,
            relative_attention_buckets: None,
            prompts: Default::default(),
            default_prompt_name: None,
        }
    }

    fn tiny_mpnet_config() -> ModelConfig {
        let mut config = tiny_config();
        config.architecture = Architecture::Mpnet;
        config.model_type = "mpnet".into();
        config.encoder.type_vocab_size = 0;
        config.encoder.pad_token_id = 1;
        config.max_seq_length = 30;
        config.relative_attention_buckets = Some(BUCKETS);
        config
    }

    /// Weights spread evenly around their mean (standard deviation 0.3),
    /// from a fixed seed, so every run tests the same model.
    fn random_weights(config: &ModelConfig) -> HashMap<String, Tensor> {
        let mut weights = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut put = |name: String, shape: &[usize], mean: f64| {
            let count: usize = shape.iter().product();
            let spread = 0.3 * 3f64.sqrt();
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                    (mean + spread * (2.0 * unit - 1.0)) as f32
                })
                .collect();
            let tensor = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
            weights.insert(name, tensor);
        };
        let (h, i) = (HIDDEN, INTERMEDIATE);
        put("embeddings.word_embeddings.weight".into(), &[VOCAB, h], 0.0);
        put(
            "embeddings.position_embeddings.weight".into(),
            &[32, h],
            0.0,
        );
        let mpnet = config.architecture == Architecture::Mpnet;
        if mpnet {
            let heads = config.encoder.num_attention_heads;
            put(
                "encoder.relative_attention_bias.weight".into(),
                &[BUCKETS, heads],
                0.0,
            );
        } else {
            put(
                "embeddings.token_type_embeddings.weight".into(),
                &[2, h],
                0.0,
            );
        }
        let attention_norm = if mpnet {
            "attention.LayerNorm"
        } else {
            "attention.output.LayerNorm"
        };
        for norm in ["embeddings.LayerNorm".to_string()].into_iter().chain(
            (0..config.encoder.num_hidden_layers).flat_map(|l| {
                [
                    format!("encoder.layer.{l}.{attention_norm}"),
                    format!("encoder.layer.{l}.output.LayerNorm"),
                ]
            }),
        ) {
            put(format!("{norm}.weight"), &[h], 1.0);
            put(format!("{norm}.bias"), &[h], 0.0);
        }
        let projections = if mpnet {
            [
                "attention.attn.q",
                "attention.attn.k",
                "attention.attn.v",
                "attention.attn.o",
            ]
        } else {
            [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            ]
        };
        for l in 0..config.encoder.num_hidden_layers {
            let dense = [
                (projections[0], h, h),
                (projections[1], h, h),
                (projections[2], h, h),
                (projections[3], h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ];
            for (name, outputs, inputs) in dense {
                put(
                    format!("encoder.layer.{l}.{name}.weight"),
                    &[outputs, inputs],
                    0.0,
                );
                put(format!("encoder.layer.{l}.{name}.bias"), &[outputs], 0.0);
            }
        }
        weights
    }

    /// The tiny encoder on `weights`, its layers on pulse-kernels in
    /// `cpu_kernels` precision or on Candle ops.
    fn tiny_encoder(
        config: &ModelConfig,
        weights: &HashMap<String, Tensor>,
        cpu_kernels: Option<WeightPrecision>,
    ) -> NativeEncoder {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        NativeEncoder::load_with(vb, config, cpu_kernels).unwrap()
    }

    /// A batch of sequences of `ids` (type 0), at most 9 tokens each.
    fn tiny_batch(config: &ModelConfig, ids: &[&[u32]]) -> EncoderInput {
        let types = [0u32; 9];
        let sequences: Vec<(&[u32], &[u32])> =
            ids.iter().map(|ids| (*ids, &types[..ids.len()])).collect();
        batch_input(&sequences, config, &Device::Cpu).unwrap()
    }

    #[test]
    fn cpu_kernels_give_candle_ops_states_on_a_mixed_batch() {
        for config in [tiny_config(), tiny_mpnet_config()] {
            cpu_kernels_give_candle_ops_states(&config);
        }
    }

    fn cpu_kernels_give_candle_ops_states(config: &ModelConfig) {
        let config = config.clone();
        let weights = random_weights(&config);
        let encoder = |cpu_kernels| tiny_encoder(&config, &weights, cpu_kernels);
        let (kernels, ops) = (encoder(Some(WeightPrecision::F32)), encoder(None));
        assert!(matches!(kernels.layers, Layers::Cpu(_)));
        assert!(matches!(ops.layers, Layers::Tensors(_)));
        let ids: [&[u32]; 4] = [
            &[3, 17, 9, 4, 2],
            &[5],
            &[8, 1, 44, 49, 12, 30, 7, 7, 2],
            &[6, 6],
        ];
        let input = tiny_batch(&config, &ids);
        let states =
            |encoder: &NativeEncoder| encoder.forward(&input).unwrap().to_vec3::<f32>().unwrap();
        let (a, b) = (states(&kernels), states(&ops));
        // bf16 runs on the portable tile where the CPU lacks AVX-512 BF16.
        let reduced = [WeightPrecision::Int8, WeightPrecision::Bf16]
            .map(|precision| (precision, states(&encoder(Some(precision)))));
        for (row, ids) in ids.iter().enumerate() {
            for t in 0..ids.len() {
                for (x, y) in a[row][t].iter().zip(&b[row][t]) {
                    assert!(
                        (x - y).abs() < 1e-4,
                        "sequence {row}, token {t}: {x} vs {y}"
                    );
                }
                // Reduced precision moves every state a little, never far.
                for (precision, q) in &reduced {
                    let (f, i) = (&b[row][t], &q[row][t]);
                    let dot: f32 = f.iter().zip(i).map(|(x, y)| x * y).sum();
                    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    let cosine = dot / (norm(f) * norm(i));
                    assert!(
                        (0.999..1.0001).contains(&cosine),
                        "{precision:?}, sequence {row}, token {t}: cosine {cosine}"
                    );
                }
            }
        }
    }

    #[test]
    fn kept_buffers_give_the_same_states_batch_after_batch() {
        let config = tiny_config();
        let weights = random_weights(&config);
        let encoder = || tiny_encoder(&config, &weights, Some(WeightPrecision::F32));
        let big = tiny_batch(
            &config,
            &[&[3, 17, 9, 4, 2], &[8, 1, 44, 49, 12, 30, 7, 7, 2]],
        );
        let small = tiny_batch(&config, &[&[5, 6]]);
        let states = |encoder: &NativeEncoder, input: &EncoderInput| {
            encoder.forward(input).unwrap().to_vec3::<f32>().unwrap()
        };
        let (fresh_big, fresh_small) = (states(&encoder(), &big), states(&encoder(), &small));
        let reused = encoder();
        // Larger, smaller, then larger again than the kept buffers.
        for (input, expected) in [
            (&big, &fresh_big),
            (&small, &fresh_small),
            (&big, &fresh_big),
            (&small, &fresh_small),
        ] {
            assert_eq!(&states(&reused, input), expected);
        }
        let Layers::Cpu(layers) = &reused.layers else {
            panic!("the CPU layers were not loaded");
        };
        assert_eq!(layers.spare.lock().unwrap().len(), 1);
    }

    #[test]
    fn mpnet_buckets_follow_mpnet() {
        // Worked by hand from MPNet's formula with 32 buckets: keys before
        // the query in 0..16, after it in 16..32; exact below 8 places,
        // then 8 + ⌊ln(d/8) / ln 16 · 8⌋, at most 15.
        let expected = [
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (-8, 8),
            (-12, 9),
            (-16, 10),
            (-32, 12),
            (-64, 14),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (20, 26),
            (1000, 31),
        ];
        for (offset, bucket) in expected {
            assert_eq!(mpnet_bucket(offset, 32), bucket, "offset {offset}");
        }
    }

    #[test]
    fn mpnet_position_bias_reaches_every_layer_path() {
        let config = tiny_mpnet_config();
        let mut weights = random_weights(&config);
        let input = tiny_batch(&config, &[&[3, 17, 9, 4, 2], &[8, 1, 44, 2]]);
        let states = |weights: &HashMap<String, Tensor>, cpu_kernels| {
            tiny_encoder(&config, weights, cpu_kernels)
                .forward(&input)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap()
        };
        let before = [
            states(&weights, None),
            states(&weights, Some(WeightPrecision::F32)),
        ];
        let name = "encoder.relative_attention_bias.weight";
        let changed = (weights[name].clone() + 1.5).unwrap();
        weights.insert(name.into(), changed);
        let after = [
            states(&weights, None),
            states(&weights, Some(WeightPrecision::F32)),
        ];
        // A bias the same for every bucket and head cancels in the softmax.
        for (a, b) in before.iter().zip(&after) {
            for (x, y) in a[0][0].iter().zip(&b[0][0]) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y}");
            }
        }
        let scale = (weights[name].clone() * 3.0).unwrap();
        weights.insert(name.into(), scale);
        let scaled = [
            states(&weights, None),
            states(&weights, Some(WeightPrecision::F32)),
        ];
        for (a, b) in after.iter().zip(&scaled) {
            let moved = a[0][0]
                .iter()
                .zip(&b[0][0])
                .any(|(x, y)| (x - y).abs() > 1e-3);
            assert!(moved, "the position bias changed nothing");
        }
    }

    #[test]
    fn packing_lists_real_tokens_and_their_slots() {
        let packing = Packing::of(&[2, 0, 3], 3, &Device::Cpu).unwrap().unwrap();
        assert_eq!(
            packing.tokens.to_vec1::<u32>().unwrap(),
            vec![0, 1, 6, 7, 8]
        );
        assert_eq!(
            packing.slots.to_vec1::<u32>().unwrap(),
            vec![0, 1, 0, 0, 0, 0, 2, 3, 4]
        );
        assert!(Packing::of(&[3, 3], 3, &Device::Cpu).unwrap().is_none());
    }
}
