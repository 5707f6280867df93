//! Numeric hot spots of pulse. Every kernel has a CPU implementation; CUDA
//! twins with the same signatures join behind the `cuda` feature.

pub mod pooling;

pub use pooling::{Pooling, PoolingError, UnknownPooling, l2_normalize_cpu, pool, pool_cpu};
