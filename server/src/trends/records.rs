//! Runs and trends, kept in the store beside the signals so that a remote
//! Qdrant holds everything: per model one collection `trends__<model>`
//! with a point per trend (its vector the trend's centroid) and a point per
//! finished run. A run's point is written last, so a run is listed only once
//! all of its trends and labels are stored.

use crate::signals::model_slug;
use pulse_store::{FieldValue, PointRecord, SignalFilter, StoreError, VectorStore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::LazyLock;
use uuid::Uuid;

static RECORD_NAMESPACE: LazyLock<Uuid> =
    LazyLock::new(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:pulse:trend-record"));

/// Points written per store call.
const CHUNK: usize = 256;

pub fn trends_collection(model: &str) -> String {
    format!("trends__{}", model_slug(model))
}

/// The clustering parameters as asked for (0 and empty mean the default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamsRecord {
    pub min_cluster_size: u32,
    pub min_samples: u32,
    pub selection: String,
    pub epsilon: f64,
    pub allow_single_cluster: bool,
    /// Runs stored before approximate mode existed were exact.
    #[serde(default)]
    pub approximate: bool,
    /// The pipeline's other steps; runs stored before it existed had none
    /// of them.
    #[serde(default)]
    pub reduce: bool,
    #[serde(default)]
    pub reduce_dimensions: u32,
    #[serde(default)]
    pub reduce_neighbours: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "no_assignment")]
    pub assign: String,
    #[serde(default)]
    pub assign_threshold: f32,
    #[serde(default)]
    pub merge_threshold: Option<f32>,
    #[serde(default)]
    pub max_trends: u32,
}

fn no_assignment() -> String {
    "off".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job_id: String,
    pub brand: String,
    pub model: String,
    /// Unix milliseconds; strictly increasing over a brand's runs.
    pub finished_ms: i64,
    pub window_from: i64,
    pub window_to: i64,
    pub signals: u64,
    pub noise: u64,
    pub trends: u32,
    /// The first id the next run may hand out.
    pub next_trend_id: i64,
    pub params: ParamsRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepresentativeRecord {
    pub signal_id: String,
    pub point_id: Uuid,
    pub text: String,
    pub probability: f32,
    pub similarity: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendRecord {
    pub trend_id: i64,
    pub brand: String,
    pub model: String,
    pub run_id: String,
    pub size: u64,
    /// Members that joined by assignment; trends stored before it existed
    /// had none.
    #[serde(default)]
    pub assigned: u64,
    pub representatives: Vec<RepresentativeRecord>,
    pub keywords: Vec<(String, f64)>,
    pub sources: Vec<(String, u64)>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub buckets: Vec<u64>,
    pub bucket_width_ms: i64,
    pub growth: f64,
    /// `new`, `continued`, `split` or `merged`.
    pub origin: String,
    pub parents: Vec<i64>,
    /// Kept as the point's vector, not in the payload.
    #[serde(skip)]
    pub centroid: Vec<f32>,
    /// Kept under its own payload key: the summary path rewrites it without
    /// touching the rest of the record. `None` in runs stored before LLM
    /// summaries existed.
    #[serde(skip)]
    pub llm: Option<LlmRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmStatus {
    NotConfigured,
    Pending,
    Done,
    Failed,
}

/// A trend's LLM summary and how it came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRecord {
    pub status: LlmStatus,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub sentiment: String,
    #[serde(default)]
    pub suggested_action: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub prompt_version: String,
    #[serde(default)]
    pub tokens_in: u32,
    #[serde(default)]
    pub tokens_out: u32,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub raw_response: String,
    pub updated_ms: i64,
    #[serde(default)]
    pub reused_from_run: String,
}

impl LlmRecord {
    pub fn not_configured(now_ms: i64) -> Self {
        Self::with_status(
            LlmStatus::NotConfigured,
            "no LLM provider is configured",
            now_ms,
        )
    }

    pub fn with_status(status: LlmStatus, reason: &str, now_ms: i64) -> Self {
        Self {
            status,
            title: String::new(),
            summary: String::new(),
            sentiment: String::new(),
            suggested_action: String::new(),
            provider: String::new(),
            model: String::new(),
            prompt_version: String::new(),
            tokens_in: 0,
            tokens_out: 0,
            attempts: 0,
            reason: reason.to_string(),
            raw_response: String::new(),
            updated_ms: now_ms,
            reused_from_run: String::new(),
        }
    }
}

fn run_point(run_id: &str) -> Uuid {
    Uuid::new_v5(&RECORD_NAMESPACE, format!("run:{run_id}").as_bytes())
}

fn trend_point(run_id: &str, trend_id: i64) -> Uuid {
    Uuid::new_v5(
        &RECORD_NAMESPACE,
        format!("trend:{run_id}:{trend_id}").as_bytes(),
    )
}

fn malformed(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("a stored {what} record is unreadable: {err}"))
}

fn payload(kind: &str, brand: &str, run_id: &str, ts: i64, record: Value) -> Map<String, Value> {
    let mut payload = Map::new();
    payload.insert("kind".into(), json!(kind));
    payload.insert("brand".into(), json!(brand));
    payload.insert("run_id".into(), json!(run_id));
    payload.insert("ts".into(), json!(ts));
    payload.insert("record".into(), record);
    payload
}

/// A direction for a point that must have one: `vector` unless it is all
/// zeros (a cosine collection cannot hold that).
fn storable(vector: &[f32], dimension: usize) -> Vec<f32> {
    if vector.len() == dimension && vector.iter().any(|&v| v != 0.0) {
        vector.to_vec()
    } else {
        let mut axis = vec![0.0; dimension];
        axis[0] = 1.0;
        axis
    }
}

/// Stores a finished run: its trends first, the run itself last.
/// `direction` is the run point's vector (the window's mean direction).
pub async fn save_run(
    store: &dyn VectorStore,
    dimension: usize,
    run: &RunRecord,
    trends: &[TrendRecord],
    direction: &[f32],
) -> Result<(), StoreError> {
    let collection = trends_collection(&run.model);
    store.ensure_collection(&collection, dimension).await?;
    let points = trends
        .iter()
        .map(|trend| {
            let record = serde_json::to_value(trend).map_err(|e| malformed("trend", e))?;
            let mut payload = payload("trend", &run.brand, &run.run_id, run.finished_ms, record);
            payload.insert("trend_id".into(), json!(trend.trend_id));
            if let Some(llm) = &trend.llm {
                payload.insert(LLM_KEY.into(), llm_value(llm)?);
            }
            Ok(PointRecord {
                id: trend_point(&run.run_id, trend.trend_id),
                vector: Some(storable(&trend.centroid, dimension)),
                payload,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    for chunk in points.chunks(CHUNK) {
        store.upsert(&collection, chunk.to_vec()).await?;
    }
    let record = serde_json::to_value(run).map_err(|e| malformed("run", e))?;
    let point = PointRecord {
        id: run_point(&run.run_id),
        vector: Some(storable(direction, dimension)),
        payload: payload("run", &run.brand, &run.run_id, run.finished_ms, record),
    };
    store.upsert(&collection, vec![point]).await
}

fn filter(brand: &str, kind: &str, more: Vec<(String, FieldValue)>) -> SignalFilter {
    let mut fields = vec![("kind".to_string(), FieldValue::Keyword(kind.into()))];
    fields.extend(more);
    SignalFilter {
        brand: Some(brand.to_string()),
        fields,
        ..Default::default()
    }
}

/// Every point that passes `filter`, page by page.
pub async fn scroll_all(
    store: &dyn VectorStore,
    collection: &str,
    filter: &SignalFilter,
    with_vectors: bool,
) -> Result<Vec<PointRecord>, StoreError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .scroll(collection, filter, after, 1000, with_vectors)
            .await?;
        all.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

fn record<T: for<'de> Deserialize<'de>>(what: &str, point: &PointRecord) -> Result<T, StoreError> {
    let value = point
        .payload
        .get("record")
        .cloned()
        .ok_or_else(|| malformed(what, "no `record` field"))?;
    serde_json::from_value(value).map_err(|e| malformed(what, e))
}

fn trend_of(point: PointRecord) -> Result<TrendRecord, StoreError> {
    let mut trend: TrendRecord = record("trend", &point)?;
    trend.llm = point
        .payload
        .get(LLM_KEY)
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| malformed("LLM summary", e))?;
    trend.centroid = point.vector.unwrap_or_default();
    Ok(trend)
}

const LLM_KEY: &str = "llm";

fn llm_value(llm: &LlmRecord) -> Result<Value, StoreError> {
    serde_json::to_value(llm).map_err(|e| malformed("LLM summary", e))
}

/// Replaces the LLM summary of one stored trend.
pub async fn set_llm(
    store: &dyn VectorStore,
    model: &str,
    run_id: &str,
    trend_id: i64,
    llm: &LlmRecord,
) -> Result<(), StoreError> {
    let mut keys = Map::new();
    keys.insert(LLM_KEY.into(), llm_value(llm)?);
    store
        .set_payload(
            &trends_collection(model),
            vec![(trend_point(run_id, trend_id), keys)],
        )
        .await
}

/// Where the trends of `model` live, made on first use so that readers of
/// a model that never ran get "no run" rather than a missing collection.
async fn collection(
    store: &dyn VectorStore,
    model: &str,
    dimension: usize,
) -> Result<String, StoreError> {
    let collection = trends_collection(model);
    store.ensure_collection(&collection, dimension).await?;
    Ok(collection)
}

/// The brand's most recent finished run.
pub async fn latest_run(
    store: &dyn VectorStore,
    model: &str,
    dimension: usize,
    brand: &str,
) -> Result<Option<RunRecord>, StoreError> {
    let collection = collection(store, model, dimension).await?;
    let points = scroll_all(store, &collection, &filter(brand, "run", Vec::new()), false).await?;
    let mut runs = points
        .iter()
        .map(|p| record::<RunRecord>("run", p))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|run| run.finished_ms);
    Ok(runs.pop())
}

/// The run `run_id`, if it finished and belongs to `brand`.
pub async fn run(
    store: &dyn VectorStore,
    model: &str,
    dimension: usize,
    brand: &str,
    run_id: &str,
) -> Result<Option<RunRecord>, StoreError> {
    let collection = collection(store, model, dimension).await?;
    let found = store.retrieve(&collection, &[run_point(run_id)]).await?;
    let run = found
        .first()
        .map(|p| record::<RunRecord>("run", p))
        .transpose()?;
    Ok(run.filter(|r| r.brand == brand))
}

/// The trends of a run, largest first.
pub async fn trends_of(
    store: &dyn VectorStore,
    run: &RunRecord,
    dimension: usize,
) -> Result<Vec<TrendRecord>, StoreError> {
    let collection = collection(store, &run.model, dimension).await?;
    let by_run = vec![(
        "run_id".to_string(),
        FieldValue::Keyword(run.run_id.clone()),
    )];
    let points = scroll_all(
        store,
        &collection,
        &filter(&run.brand, "trend", by_run),
        true,
    )
    .await?;
    let mut trends = points
        .into_iter()
        .map(trend_of)
        .collect::<Result<Vec<_>, _>>()?;
    trends.sort_by(|a, b| b.size.cmp(&a.size).then(a.trend_id.cmp(&b.trend_id)));
    Ok(trends)
}

/// Trend `trend_id` as run `run_id` left it, or as the latest finished run
/// that has it.
pub async fn trend(
    store: &dyn VectorStore,
    model: &str,
    dimension: usize,
    brand: &str,
    trend_id: i64,
    run_id: Option<&str>,
) -> Result<Option<TrendRecord>, StoreError> {
    let collection = collection(store, model, dimension).await?;
    if let Some(run_id) = run_id {
        let found = store
            .retrieve(&collection, &[trend_point(run_id, trend_id)])
            .await?;
        return found
            .into_iter()
            .next()
            .map(trend_of)
            .transpose()
            .map(|t| t.filter(|t| t.brand == brand));
    }
    let by_id = vec![("trend_id".to_string(), FieldValue::Integer(trend_id))];
    let points = scroll_all(store, &collection, &filter(brand, "trend", by_id), true).await?;
    // Only runs that finished count: a cancelled job leaves no run point,
    // but its trends may be stored.
    let mut newest: Option<(i64, PointRecord)> = None;
    for point in points {
        let ts = point.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
        if newest.as_ref().is_some_and(|(best, _)| *best >= ts) {
            continue;
        }
        let run_id = point
            .payload
            .get("run_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !store
            .retrieve(&collection, &[run_point(run_id)])
            .await?
            .is_empty()
        {
            newest = Some((ts, point));
        }
    }
    newest.map(|(_, point)| trend_of(point)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_store::EmbeddedStore;

    fn trend_record(run_id: &str, trend_id: i64, size: u64) -> TrendRecord {
        TrendRecord {
            trend_id,
            brand: "acme".into(),
            model: "m".into(),
            run_id: run_id.into(),
            size,
            assigned: 0,
            representatives: Vec::new(),
            keywords: vec![("battery".into(), 0.5)],
            sources: vec![("x".into(), size)],
            first_seen: 1,
            last_seen: 2,
            buckets: vec![size],
            bucket_width_ms: 10,
            growth: 1.0,
            origin: "new".into(),
            parents: Vec::new(),
            centroid: vec![0.0, 1.0, 0.0],
            llm: Some(LlmRecord::not_configured(7)),
        }
    }

    fn run_record(run_id: &str, finished_ms: i64) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            job_id: run_id.into(),
            brand: "acme".into(),
            model: "m".into(),
            finished_ms,
            window_from: 0,
            window_to: 10,
            signals: 5,
            noise: 1,
            trends: 2,
            next_trend_id: 3,
            params: ParamsRecord::default(),
        }
    }

    #[tokio::test]
    async fn runs_and_trends_round_trip_and_the_latest_run_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = run_record("r1", 100);
        save_run(
            &store,
            3,
            &first,
            &[trend_record("r1", 1, 3), trend_record("r1", 2, 5)],
            &[1.0, 0.0, 0.0],
        )
        .await
        .unwrap();
        let second = run_record("r2", 200);
        save_run(&store, 3, &second, &[trend_record("r2", 2, 4)], &[0.0; 3])
            .await
            .unwrap();

        assert_eq!(
            latest_run(&store, "m", 3, "acme").await.unwrap(),
            Some(second.clone())
        );
        assert_eq!(latest_run(&store, "m", 3, "globex").await.unwrap(), None);
        assert_eq!(
            run(&store, "m", 3, "acme", "r1").await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(run(&store, "m", 3, "globex", "r1").await.unwrap(), None);

        let trends = trends_of(&store, &first, 3).await.unwrap();
        assert_eq!(
            trends.iter().map(|t| t.trend_id).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(trends[0].keywords, vec![("battery".to_string(), 0.5)]);
        assert!((trends[0].centroid[1] - 1.0).abs() < 1e-6);

        let latest = trend(&store, "m", 3, "acme", 2, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((latest.run_id.as_str(), latest.size), ("r2", 4));
        let older = trend(&store, "m", 3, "acme", 2, Some("r1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(older.size, 5);
        assert_eq!(trend(&store, "m", 3, "acme", 9, None).await.unwrap(), None);

        assert_eq!(latest.llm, Some(LlmRecord::not_configured(7)));
        let mut done = LlmRecord::with_status(LlmStatus::Done, "", 9);
        done.title = "Battery complaints".into();
        set_llm(&store, "m", "r2", 2, &done).await.unwrap();
        let updated = trend(&store, "m", 3, "acme", 2, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.llm, Some(done));
        assert_eq!(updated.keywords, latest.keywords);
        // A trend that was never stored cannot get a summary.
        assert!(
            set_llm(&store, "m", "r2", 9, &LlmRecord::not_configured(1))
                .await
                .is_err()
        );
    }
}
