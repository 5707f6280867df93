//! The remote store: a Qdrant server or cluster through `qdrant-client`
//! (gRPC). Sharding, replication and snapshots are Qdrant's; pulse sets the
//! shard number, replication factor and write consistency of the
//! collections it creates, writes with `wait=true`, and retries transient
//! failures with jittered exponential back-off.

use super::{
    FieldValue, INDEXED_FIELDS, IndexKind, PointRecord, ScoredRecord, SignalFilter, StoreError,
    VectorStore, check_dimension, check_points,
};
use parking_lot::Mutex;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, PointId, PointStruct,
    PointsIdsList, PointsUpdateOperation, Range, ScrollPointsBuilder, SearchPointsBuilder,
    UpdateBatchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, point_id::PointIdOptions,
    points_update_operation,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// The qdrant-client release pulse is built with (checked against
/// Cargo.lock by a test), compared with the server's version at start-up.
pub const CLIENT_VERSION: &str = "1.20.0";

/// The Qdrant server release pulse's remote-store tests run against (the
/// test tool in `shared/tools/qdrant/`).
pub const TESTED_QDRANT: &str = "1.18.3";

/// How collections created on the server are laid out.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub url: String,
    pub api_key: Option<String>,
    pub shard_number: u32,
    pub replication_factor: u32,
    pub write_consistency_factor: u32,
    /// Tries per call before a transient failure is reported.
    pub attempts: u32,
    pub timeout: Duration,
}

pub struct RemoteStore {
    client: Qdrant,
    options: RemoteOptions,
    /// Collections known to exist, with their dimension.
    known: Mutex<HashMap<String, usize>>,
}

fn transient(err: &QdrantError) -> bool {
    match err {
        QdrantError::ResponseError { status } => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::Internal
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        QdrantError::ResourceExhaustedError { .. } => true,
        _ => false,
    }
}

fn failure(err: QdrantError) -> StoreError {
    StoreError::Backend(format!("qdrant: {err}"))
}

/// Up to ±50 % of `base`, from the clock: enough to keep clients that failed
/// together from retrying together.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.5 + f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(factor)
}

impl RemoteStore {
    pub fn connect(options: RemoteOptions) -> Result<Self, StoreError> {
        // The client's own check prints to standard output on every
        // connection, from a runtime of its own; pulse asks once, through
        // `server_version`, and logs what it found.
        let client = Qdrant::from_url(&options.url)
            .api_key(options.api_key.clone())
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .skip_compatibility_check()
            .build()
            .map_err(failure)?;
        Ok(RemoteStore {
            client,
            options,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The server's version, from its health check (retried like any call).
    pub async fn server_version(&self) -> Result<String, StoreError> {
        let reply = self.retry(|| self.client.health_check()).await?;
        Ok(reply.version)
    }

    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if transient(&err) && attempt < self.options.attempts.max(1) => {
                    let wait = match &err {
                        QdrantError::ResourceExhaustedError {
                            retry_after_seconds,
                            ..
                        } => Duration::from_secs(*retry_after_seconds).max(delay),
                        _ => jittered(delay),
                    };
                    tracing::warn!(error = %err, attempt, "qdrant call failed; retrying");
                    metrics::counter!("pulse_store_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(err) => {
                    if transient(&err) {
                        metrics::counter!("pulse_store_unavailable_total").increment(1);
                    }
                    return Err(failure(err));
                }
            }
        }
    }

    /// The vector size of a collection on the server (`None` for named
    /// vectors, which pulse does not create).
    async fn server_dimension(&self, collection: &str) -> Result<Option<usize>, StoreError> {
        let info = self
            .retry(|| self.client.collection_info(collection))
            .await?;
        Ok(info
            .result
            .and_then(|i| i.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|config| match config {
                qdrant_client::qdrant::vectors_config::Config::Params(params) => {
                    Some(params.size as usize)
                }
                qdrant_client::qdrant::vectors_config::Config::ParamsMap(_) => None,
            }))
    }

    fn dimension(&self, collection: &str) -> Result<usize, StoreError> {
        self.known
            .lock()
            .get(collection)
            .copied()
            .ok_or_else(|| StoreError::NoCollection(collection.to_string()))
    }
}

/// Whether a server of `server` version works with this client as Qdrant
/// states it: the same major version, minor versions at most one apart.
pub fn compatible_server(server: &str) -> bool {
    let major_minor = |version: &str| -> Option<(u64, u64)> {
        let mut parts = version.trim_start_matches('v').split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (major_minor(CLIENT_VERSION), major_minor(server)) {
        (Some((client_major, client_minor)), Some((major, minor))) => {
            client_major == major && client_minor.abs_diff(minor) <= 1
        }
        _ => false,
    }
}

fn qdrant_filter(filter: &SignalFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if let Some(brand) = &filter.brand {
        must.push(Condition::matches("brand", brand.clone()));
    }
    if !filter.sources.is_empty() {
        must.push(Condition::matches("source", filter.sources.clone()));
    }
    if filter.ts_from.is_some() || filter.ts_to.is_some() {
        must.push(Condition::range(
            "ts",
            Range {
                gte: filter.ts_from.map(|t| t as f64),
                lte: filter.ts_to.map(|t| t as f64),
                ..Default::default()
            },
        ));
    }
    for (key, value) in &filter.fields {
        must.push(match value {
            FieldValue::Keyword(k) => Condition::matches(key.as_str(), k.clone()),
            FieldValue::Integer(i) => Condition::matches(key.as_str(), *i),
        });
    }
    (!must.is_empty()).then(|| Filter::must(must))
}

fn point_id(id: Uuid) -> PointId {
    PointId::from(id.to_string())
}

fn uuid_of(id: Option<PointId>) -> Result<Uuid, StoreError> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(text)) => {
            Uuid::parse_str(&text).map_err(|e| StoreError::Backend(format!("point id {text}: {e}")))
        }
        Some(PointIdOptions::Num(n)) => Err(StoreError::Backend(format!(
            "point {n} has a numeric id; pulse writes UUIDs"
        ))),
        None => Err(StoreError::Backend(
            "a point came back without an id".into(),
        )),
    }
}

fn dense(vectors: &qdrant_client::qdrant::VectorsOutput) -> Option<Vec<f32>> {
    match vectors.get_vector()? {
        qdrant_client::qdrant::vector_output::Vector::Dense(dense) => Some(dense.data),
        _ => None,
    }
}

fn json_payload(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Map<String, Value> {
    Map::from(Payload::from(payload))
}

#[async_trait::async_trait]
impl VectorStore for RemoteStore {
    async fn ensure_collection(
        &self,
        collection: &str,
        dimension: usize,
    ) -> Result<(), StoreError> {
        if let Some(known) = self.known.lock().get(collection).copied() {
            return if known == dimension {
                Ok(())
            } else {
                Err(StoreError::Dimension {
                    collection: collection.to_string(),
                    expected: known,
                    actual: dimension,
                })
            };
        }
        let exists = self
            .retry(|| self.client.collection_exists(collection))
            .await?;
        if exists {
            if let Some(size) = self.server_dimension(collection).await?
                && size != dimension
            {
                return Err(StoreError::Dimension {
                    collection: collection.to_string(),
                    expected: size,
                    actual: dimension,
                });
            }
        } else {
            let o = &self.options;
            self.retry(|| {
                self.client.create_collection(
                    CreateCollectionBuilder::new(collection)
                        .vectors_config(VectorParamsBuilder::new(
                            dimension as u64,
                            Distance::Cosine,
                        ))
                        .shard_number(o.shard_number)
                        .replication_factor(o.replication_factor)
                        .write_consistency_factor(o.write_consistency_factor),
                )
            })
            .await?;
            for (field, kind) in INDEXED_FIELDS {
                let field_type = match kind {
                    IndexKind::Keyword => FieldType::Keyword,
                    IndexKind::Integer => FieldType::Integer,
                };
                self.retry(|| {
                    self.client.create_field_index(
                        CreateFieldIndexCollectionBuilder::new(collection, field, field_type)
                            .wait(true),
                    )
                })
                .await?;
            }
        }
        self.known.lock().insert(collection.to_string(), dimension);
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<PointRecord>) -> Result<(), StoreError> {
        check_points(&points, self.dimension(collection)?, collection)?;
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                PointStruct::new(
                    point_id(p.id),
                    p.vector.unwrap_or_default(),
                    Payload::from(p.payload),
                )
            })
            .collect();
        self.retry(|| {
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection, points.clone()).wait(true))
        })
        .await?;
        Ok(())
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &SignalFilter,
        limit: usize,
        with_payload: bool,
    ) -> Result<Vec<ScoredRecord>, StoreError> {
        let dimension = self.dimension(collection)?;
        check_dimension(&vector, dimension, collection)?;
        let filter = qdrant_filter(filter);
        let response = self
            .retry(|| {
                let mut request =
                    SearchPointsBuilder::new(collection, vector.clone(), limit as u64)
                        .with_payload(with_payload);
                if let Some(filter) = filter.clone() {
                    request = request.filter(filter);
                }
                self.client.search_points(request)
            })
            .await?;
        response
            .result
            .into_iter()
            .map(|hit| {
                Ok(ScoredRecord {
                    id: uuid_of(hit.id)?,
                    score: hit.score,
                    payload: with_payload.then(|| json_payload(hit.payload)),
                })
            })
            .collect()
    }

    async fn retrieve(
        &self,
        collection: &str,
        ids: &[Uuid],
    ) -> Result<Vec<PointRecord>, StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| point_id(*id)).collect();
        let response = self
            .retry(|| {
                self.client.get_points(
                    GetPointsBuilder::new(collection, ids.clone())
                        .with_payload(true)
                        .with_vectors(true),
                )
            })
            .await?;
        response
            .result
            .into_iter()
            .map(|p| {
                Ok(PointRecord {
                    id: uuid_of(p.id)?,
                    vector: p.vectors.and_then(|v| dense(&v)),
                    payload: json_payload(p.payload),
                })
            })
            .collect()
    }

    async fn scroll(
        &self,
        collection: &str,
        filter: &SignalFilter,
        after: Option<Uuid>,
        limit: usize,
        with_vectors: bool,
    ) -> Result<(Vec<PointRecord>, Option<Uuid>), StoreError> {
        let filter = qdrant_filter(filter);
        let response = self
            .retry(|| {
                let mut request = ScrollPointsBuilder::new(collection)
                    .limit(limit as u32)
                    .with_payload(true)
                    .with_vectors(with_vectors);
                if let Some(filter) = filter.clone() {
                    request = request.filter(filter);
                }
                if let Some(after) = after {
                    request = request.offset(point_id(after));
                }
                self.client.scroll(request)
            })
            .await?;
        let records = response
            .result
            .into_iter()
            .map(|p| {
                Ok(PointRecord {
                    id: uuid_of(p.id)?,
                    vector: p.vectors.and_then(|v| dense(&v)),
                    payload: json_payload(p.payload),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = response
            .next_page_offset
            .map(|id| uuid_of(Some(id)))
            .transpose()?;
        Ok((records, next))
    }

    async fn collections(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let listed = self.retry(|| self.client.list_collections()).await?;
        let mut collections = Vec::new();
        for name in listed.collections.into_iter().map(|c| c.name) {
            if let Some(dimension) = self.server_dimension(&name).await? {
                collections.push((name, dimension));
            }
        }
        collections.sort();
        Ok(collections)
    }

    async fn count(&self, collection: &str, filter: &SignalFilter) -> Result<usize, StoreError> {
        self.dimension(collection)?;
        let filter = qdrant_filter(filter);
        let response = self
            .retry(|| {
                let mut request = CountPointsBuilder::new(collection).exact(true);
                if let Some(filter) = filter.clone() {
                    request = request.filter(filter);
                }
                self.client.count(request)
            })
            .await?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    async fn set_payload(
        &self,
        collection: &str,
        updates: Vec<(Uuid, Map<String, Value>)>,
    ) -> Result<(), StoreError> {
        // Per-point payloads differ, so each is its own operation; a batch
        // carries many in one round trip.
        const OPERATIONS_PER_CALL: usize = 256;
        for chunk in updates.chunks(OPERATIONS_PER_CALL) {
            let operations: Vec<PointsUpdateOperation> = chunk
                .iter()
                .map(|(id, payload)| PointsUpdateOperation {
                    operation: Some(points_update_operation::Operation::SetPayload(
                        points_update_operation::SetPayload {
                            payload: Payload::from(payload.clone()).into(),
                            points_selector: Some(vec![point_id(*id)].into()),
                            ..Default::default()
                        },
                    )),
                })
                .collect();
            self.retry(|| {
                self.client.update_points_batch(
                    UpdateBatchPointsBuilder::new(collection, operations.clone()).wait(true),
                )
            })
            .await?;
        }
        Ok(())
    }

    async fn delete(&self, collection: &str, filter: &SignalFilter) -> Result<(), StoreError> {
        let Some(filter) = qdrant_filter(filter) else {
            return Err(StoreError::Filter(
                "refusing to delete with an empty filter".into(),
            ));
        };
        self.retry(|| {
            self.client.delete_points(
                DeletePointsBuilder::new(collection)
                    .points(filter.clone())
                    .wait(true),
            )
        })
        .await?;
        Ok(())
    }

    async fn delete_ids(&self, collection: &str, ids: &[Uuid]) -> Result<(), StoreError> {
        let ids = PointsIdsList {
            ids: ids.iter().map(|id| point_id(*id)).collect(),
        };
        self.retry(|| {
            self.client.delete_points(
                DeletePointsBuilder::new(collection)
                    .points(ids.clone())
                    .wait(true),
            )
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_follows_qdrants_rule() {
        assert!(compatible_server("1.20.0"));
        assert!(compatible_server("1.19.4"));
        assert!(compatible_server("v1.21.1"));
        assert!(!compatible_server("1.18.3"));
        assert!(!compatible_server("2.20.0"));
        assert!(!compatible_server("dev"));
    }

    #[test]
    fn the_client_version_is_the_one_built_with() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let entry = lock
            .split("[[package]]")
            .find(|entry| entry.contains("name = \"qdrant-client\""))
            .unwrap();
        assert!(
            entry.contains(&format!("version = \"{CLIENT_VERSION}\"")),
            "{entry}"
        );
    }
}
