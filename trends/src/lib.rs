//! Finding trends in embedded signals: HDBSCAN clustering and the measures
//! used to check it.

pub mod hdbscan;
pub mod quality;

pub use hdbscan::{Clustering, HdbscanError, Metric, Params, Selection, Timings, hdbscan};
