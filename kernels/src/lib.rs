//! Numeric hot spots of pulse: pooling and normalisation of token states,
//! blocked pairwise distances for clustering, and the CPU encoder layer
//! (packed dense layers, per-sequence attention, layer norm). Pooling and
//! distances have a CPU implementation and a CUDA twin (`kernels/cuda/*.cu`,
//! behind the `cuda` feature) behind the same function, which picks by the
//! device the data is on. The encoder-layer kernels are the CPU's alone: on a
//! GPU the encoder runs Candle's own (cuBLAS) ops.

mod disjoint;
pub mod distance;
pub mod matmul;
pub mod pooling;
pub mod ptx;
#[cfg(test)]
mod test_values;
pub mod transformer;
mod vector_math;

pub use pooling::{Pooling, PoolingError, UnknownPooling, l2_normalize_cpu, pool, pool_cpu};
