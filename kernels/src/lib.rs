//! Numeric hot spots of pulse: pooling and normalisation of token states,
//! and blocked pairwise distances for clustering. Every kernel has a CPU
//! implementation; its CUDA twin (`kernels/cuda/*.cu`, behind the `cuda`
//! feature) sits behind the same function, which picks by the device the data
//! is on.

pub mod distance;
pub mod pooling;
pub mod ptx;

pub use pooling::{Pooling, PoolingError, UnknownPooling, l2_normalize_cpu, pool, pool_cpu};
