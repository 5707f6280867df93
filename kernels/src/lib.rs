//! Numeric hot spots of pulse: pooling and normalisation of token states,
//! and blocked pairwise distances for clustering. Every kernel has a CPU
//! implementation; CUDA twins with the same signatures join behind the `cuda`
//! feature.

pub mod distance;
pub mod pooling;

pub use pooling::{Pooling, PoolingError, UnknownPooling, l2_normalize_cpu, pool, pool_cpu};
