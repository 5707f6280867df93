//! Finding trends in embedded signals: HDBSCAN clustering, what each trend
//! is about (summaries, keywords), stable trend ids across runs, and the
//! measures used to check clustering quality.

pub mod hdbscan;
pub mod keywords;
pub mod lineage;
pub mod quality;
pub mod summary;

pub use hdbscan::{
    Clustering, HdbscanError, Metric, Params, Selection, Timings, hdbscan, hdbscan_on,
};
