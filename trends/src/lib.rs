//! Finding trends in embedded signals: the trend pipeline (an optional
//! UMAP-style reduction, HDBSCAN, assignment of noise to near trends,
//! merging of near-duplicates), what each trend
//! is about (summaries, keywords), stable trend ids across runs, and the
//! measures used to check clustering quality.

pub mod hdbscan;
pub mod keywords;
pub mod lineage;
pub mod pipeline;
pub mod quality;
pub mod reduce;
pub mod summary;

pub use hdbscan::{
    Clustering, HdbscanError, Metric, Params, Selection, Timings, hdbscan, hdbscan_on,
};
