//! Vector storage for pulse: one `VectorStore` trait, two implementations: the
//! embedded one runs Qdrant's own engine in-process (`qdrant-edge`), the
//! remote one talks to a Qdrant server or cluster (`qdrant-client`).
//!
//! Filters use Qdrant's filter language (`must` / `should` / `must_not`
//! with `match` and `range` conditions), so the same filter means the same
//! thing to the embedded engine and to a Qdrant server.

mod embedded;
mod remote;

pub use embedded::EmbeddedStore;
pub use remote::{CLIENT_VERSION, RemoteOptions, RemoteStore, TESTED_QDRANT, compatible_server};

use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The collection holding the signal vectors `model` makes: the server's
/// and every tool's that writes a window for it.
pub fn signal_collection(model: &str) -> String {
    format!("signals__{}", model_slug(model))
}

/// `model` as a collection-name suffix.
pub fn model_slug(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection `{0}` does not exist")]
    NoCollection(String),
    #[error("collection `{collection}` holds {expected}-dimensional vectors, not {actual}")]
    Dimension {
        collection: String,
        expected: usize,
        actual: usize,
    },
    #[error("invalid filter: {0}")]
    Filter(String),
    #[error("invalid point {id}: {reason}")]
    InvalidPoint { id: Uuid, reason: String },
    #[error("storage failed: {0}")]
    Backend(String),
}

/// A stored point: id, vector (when asked for) and JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRecord {
    pub id: Uuid,
    pub vector: Option<Vec<f32>>,
    pub payload: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRecord {
    pub id: Uuid,
    /// Cosine similarity.
    pub score: f32,
    pub payload: Option<Map<String, Value>>,
}

/// Which signals an operation concerns. All parts must hold; empty parts
/// do not restrict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalFilter {
    pub brand: Option<String>,
    pub sources: Vec<String>,
    /// Inclusive bounds on `ts` (Unix milliseconds).
    pub ts_from: Option<i64>,
    pub ts_to: Option<i64>,
    /// Payload fields that must hold exactly these values.
    pub fields: Vec<(String, FieldValue)>,
}

/// A value a payload field is matched against.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Keyword(String),
    Integer(i64),
}

impl FieldValue {
    fn to_json(&self) -> Value {
        match self {
            FieldValue::Keyword(k) => json!(k),
            FieldValue::Integer(i) => json!(i),
        }
    }
}

impl SignalFilter {
    /// The filter in Qdrant's filter language, or `None` for "everything".
    pub fn to_qdrant_json(&self) -> Option<Value> {
        let mut must = Vec::new();
        if let Some(brand) = &self.brand {
            must.push(json!({"key": "brand", "match": {"value": brand}}));
        }
        if !self.sources.is_empty() {
            must.push(json!({"key": "source", "match": {"any": self.sources}}));
        }
        if self.ts_from.is_some() || self.ts_to.is_some() {
            let mut range = Map::new();
            if let Some(from) = self.ts_from {
                range.insert("gte".into(), json!(from));
            }
            if let Some(to) = self.ts_to {
                range.insert("lte".into(), json!(to));
            }
            must.push(json!({"key": "ts", "range": range}));
        }
        for (key, value) in &self.fields {
            must.push(json!({"key": key, "match": {"value": value.to_json()}}));
        }
        (!must.is_empty()).then(|| json!({ "must": must }))
    }

    /// Whether a payload passes, exactly as the store decides; for checks.
    pub fn matches(&self, payload: &Map<String, Value>) -> bool {
        let brand_ok = self
            .brand
            .as_ref()
            .is_none_or(|b| payload.get("brand").and_then(Value::as_str) == Some(b));
        let source_ok = self.sources.is_empty()
            || payload
                .get("source")
                .and_then(Value::as_str)
                .is_some_and(|s| self.sources.iter().any(|x| x == s));
        let ts = payload.get("ts").and_then(Value::as_i64);
        let from_ok = self
            .ts_from
            .is_none_or(|from| ts.is_some_and(|t| t >= from));
        let to_ok = self.ts_to.is_none_or(|to| ts.is_some_and(|t| t <= to));
        let fields_ok = self
            .fields
            .iter()
            .all(|(key, value)| payload.get(key) == Some(&value.to_json()));
        brand_ok && source_ok && from_ok && to_ok && fields_ok
    }
}

/// Payload fields indexed in every collection, so filters on them stay fast.
pub const INDEXED_FIELDS: [(&str, IndexKind); 4] = [
    ("brand", IndexKind::Keyword),
    ("source", IndexKind::Keyword),
    ("ts", IndexKind::Integer),
    ("cluster", IndexKind::Integer),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Keyword,
    Integer,
}

/// Storage of vectors with payloads, grouped in collections of one
/// dimension and cosine distance. Writes return once the store has them
/// durably.
#[async_trait::async_trait]
pub trait VectorStore: Send + Sync {
    /// Every collection, with its dimension, by name.
    async fn collections(&self) -> Result<Vec<(String, usize)>, StoreError>;
    /// Creates the collection (with the payload indexes) if it is missing;
    /// an existing one must have `dimension`.
    async fn ensure_collection(&self, collection: &str, dimension: usize)
    -> Result<(), StoreError>;
    /// Inserts or replaces points by id.
    async fn upsert(&self, collection: &str, points: Vec<PointRecord>) -> Result<(), StoreError>;
    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &SignalFilter,
        limit: usize,
        with_payload: bool,
    ) -> Result<Vec<ScoredRecord>, StoreError>;
    async fn retrieve(
        &self,
        collection: &str,
        ids: &[Uuid],
    ) -> Result<Vec<PointRecord>, StoreError>;
    /// One page of points in id order after `after`, and where the next page starts.
    async fn scroll(
        &self,
        collection: &str,
        filter: &SignalFilter,
        after: Option<Uuid>,
        limit: usize,
        with_vectors: bool,
    ) -> Result<(Vec<PointRecord>, Option<Uuid>), StoreError>;
    async fn count(&self, collection: &str, filter: &SignalFilter) -> Result<usize, StoreError>;
    /// Sets the given keys in each point's payload, keeping its other keys;
    /// a point that does not exist is an error.
    async fn set_payload(
        &self,
        collection: &str,
        updates: Vec<(Uuid, Map<String, Value>)>,
    ) -> Result<(), StoreError>;
    async fn delete(&self, collection: &str, filter: &SignalFilter) -> Result<(), StoreError>;
    async fn delete_ids(&self, collection: &str, ids: &[Uuid]) -> Result<(), StoreError>;
    /// Housekeeping off the request path (index building); collections
    /// written to within `idle` are left for a later call. A Qdrant server
    /// does this itself.
    async fn maintain(&self, _idle: std::time::Duration) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Points copied per page by [`copy_collection`] unless told otherwise.
pub const COPY_PAGE: usize = 256;

/// Copies `collection` (vectors and payloads, the same point ids) from one
/// store to another, page by page in id order, starting at point `from_id`
/// (where an earlier copy stopped; `None` for the start). The target
/// collection is created if missing. `copied(points, next)` hears of each
/// page once the target holds it, with the id the next page starts at
/// (`None` after the last), so a caller can keep its place; a copy repeated
/// from any earlier place overwrites points rather than duplicating them.
/// Returns the points copied.
pub async fn copy_collection(
    from: &dyn VectorStore,
    to: &dyn VectorStore,
    (collection, dimension): (&str, usize),
    from_id: Option<Uuid>,
    page: usize,
    mut copied: impl FnMut(usize, Option<Uuid>) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    to.ensure_collection(collection, dimension).await?;
    let everything = SignalFilter::default();
    let (mut offset, mut total) = (from_id, 0);
    loop {
        let (points, next) = from
            .scroll(collection, &everything, offset, page.max(1), true)
            .await?;
        let count = points.len();
        if count > 0 {
            to.upsert(collection, points).await?;
        }
        total += count;
        copied(count, next)?;
        match next {
            Some(next) => offset = Some(next),
            None => return Ok(total),
        }
    }
}

/// Refuses a vector of another dimension than the collection's.
pub fn check_dimension(
    vector: &[f32],
    dimension: usize,
    collection: &str,
) -> Result<(), StoreError> {
    if vector.len() == dimension {
        Ok(())
    } else {
        Err(StoreError::Dimension {
            collection: collection.to_string(),
            expected: dimension,
            actual: vector.len(),
        })
    }
}

/// Rejects what no store should hold: a wrong dimension or non-finite values.
pub fn check_points(
    points: &[PointRecord],
    dimension: usize,
    collection: &str,
) -> Result<(), StoreError> {
    for point in points {
        let Some(vector) = &point.vector else {
            return Err(StoreError::InvalidPoint {
                id: point.id,
                reason: "no vector".into(),
            });
        };
        check_dimension(vector, dimension, collection)?;
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(StoreError::InvalidPoint {
                id: point.id,
                reason: "the vector holds NaN or infinity".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod conformance;
