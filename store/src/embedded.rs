//! The embedded store: one `qdrant-edge` shard per collection under a data
//! directory. `qdrant-edge` is synchronous, so every call runs on tokio's
//! blocking pool.

use super::{
    INDEXED_FIELDS, IndexKind, PointRecord, ScoredRecord, SignalFilter, StoreError, VectorStore,
    check_dimension, check_points,
};
use parking_lot::Mutex;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder,
    FieldIndexOperations, Filter, NamedQuery, PayloadFieldSchema, PayloadOps, PayloadSchemaType,
    PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum, ScrollRequest,
    SearchRequest, SetPayloadOp, UpdateOperation, VectorStructInternal, WithPayloadInterface,
    WithVector,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Collection {
    shard: EdgeShard,
    dimension: usize,
    /// `EdgeShard::flush` insists on taking the write-ahead log's and the
    /// segments' locks without waiting, so writes, flushes and optimisation
    /// take turns here.
    writer: Mutex<()>,
    /// Written to since the last optimisation, and when last.
    dirty: AtomicBool,
    last_write: Mutex<Instant>,
}

impl Collection {
    fn new(shard: EdgeShard, dimension: usize) -> Self {
        Collection {
            shard,
            dimension,
            writer: Mutex::new(()),
            dirty: AtomicBool::new(true),
            last_write: Mutex::new(Instant::now()),
        }
    }
}

pub struct EmbeddedStore {
    root: PathBuf,
    collections: Mutex<HashMap<String, Arc<Collection>>>,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) a store under `root`, loading every collection
    /// already there.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("collections");
        std::fs::create_dir_all(&dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", dir.display())))?;
        let mut collections = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(backend)? {
            let entry = entry.map_err(backend)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            let shard = EdgeShard::load(&entry.path(), None)
                .map_err(|e| backend(format!("cannot load collection `{name}`: {e}")))?;
            let dimension = shard
                .config()
                .vectors
                .values()
                .next()
                .map(|params| params.size)
                .ok_or_else(|| backend(format!("collection `{name}` has no vector")))?;
            collections.insert(name, Arc::new(Collection::new(shard, dimension)));
        }
        Ok(EmbeddedStore {
            root: root.to_path_buf(),
            collections: Mutex::new(collections),
        })
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>, StoreError> {
        self.collections
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoCollection(name.to_string()))
    }

    /// Runs `work` on the collection off the async runtime.
    async fn with<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce(&Collection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let collection = self.collection(name)?;
        tokio::task::spawn_blocking(move || work(&collection))
            .await
            .map_err(backend)?
    }

    fn create(&self, name: &str, dimension: usize) -> Result<(), StoreError> {
        let mut collections = self.collections.lock();
        if let Some(existing) = collections.get(name) {
            return if existing.dimension == dimension {
                Ok(())
            } else {
                Err(StoreError::Dimension {
                    collection: name.to_string(),
                    expected: existing.dimension,
                    actual: dimension,
                })
            };
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || name.starts_with('.')
        {
            return Err(backend(format!("invalid collection name `{name}`")));
        }
        let path = self.root.join("collections").join(name);
        std::fs::create_dir_all(&path).map_err(backend)?;
        let config = EdgeConfigBuilder::new()
            .vector(
                "",
                EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
            )
            .build();
        let shard = EdgeShard::new(&path, config).map_err(backend)?;
        for (field, kind) in INDEXED_FIELDS {
            let schema = match kind {
                IndexKind::Keyword => PayloadSchemaType::Keyword,
                IndexKind::Integer => PayloadSchemaType::Integer,
            };
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: field
                            .parse()
                            .map_err(|e| backend(format!("{field}: {e:?}")))?,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                    }),
                ))
                .map_err(backend)?;
        }
        shard.flush();
        collections.insert(
            name.to_string(),
            Arc::new(Collection::new(shard, dimension)),
        );
        Ok(())
    }
}

fn qdrant_filter(filter: &SignalFilter) -> Result<Option<Filter>, StoreError> {
    filter
        .to_qdrant_json()
        .map(|json| serde_json::from_value(json).map_err(|e| StoreError::Filter(e.to_string())))
        .transpose()
}

fn uuid_of(id: PointId) -> Result<Uuid, StoreError> {
    match id {
        PointId::Uuid(uuid) => Ok(uuid),
        PointId::NumId(n) => Err(backend(format!(
            "point {n} has a numeric id; pulse writes UUIDs"
        ))),
    }
}

fn payload_map(payload: Option<qdrant_edge::Payload>) -> Map<String, Value> {
    payload
        .map(|p| p.0.into_iter().collect())
        .unwrap_or_default()
}

fn dense(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(values) => Some(values),
        VectorStructInternal::Named(mut named) => match named.remove("")? {
            qdrant_edge::VectorInternal::Dense(values) => Some(values),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

impl Collection {
    /// Applies `operation` and makes it durable before returning.
    fn write(&self, operation: UpdateOperation) -> Result<(), StoreError> {
        self.write_all(std::iter::once(operation))
    }

    /// Applies `operations` in order and makes them durable with one flush;
    /// on an error the operations before it stay applied.
    fn write_all(
        &self,
        operations: impl IntoIterator<Item = UpdateOperation>,
    ) -> Result<(), StoreError> {
        let _turn = self.writer.lock();
        let applied = operations
            .into_iter()
            .try_for_each(|operation| self.shard.update(operation).map(drop));
        self.shard.flush();
        applied.map_err(backend)?;
        self.dirty.store(true, Ordering::Release);
        *self.last_write.lock() = Instant::now();
        Ok(())
    }

    /// Builds indexes and merges segments if written to and then left alone
    /// for `idle`; writes wait meanwhile.
    fn optimize_if_idle(&self, idle: Duration) -> Result<bool, StoreError> {
        if !self.dirty.load(Ordering::Acquire) || self.last_write.lock().elapsed() < idle {
            return Ok(false);
        }
        let _turn = self.writer.lock();
        self.dirty.store(false, Ordering::Release);
        let optimized = self.shard.optimize().map_err(backend)?;
        self.shard.flush();
        Ok(optimized)
    }
}

#[async_trait::async_trait]
impl VectorStore for EmbeddedStore {
    async fn collections(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let mut collections: Vec<(String, usize)> = self
            .collections
            .lock()
            .iter()
            .map(|(name, collection)| (name.clone(), collection.dimension))
            .collect();
        collections.sort();
        Ok(collections)
    }

    async fn ensure_collection(
        &self,
        collection: &str,
        dimension: usize,
    ) -> Result<(), StoreError> {
        self.create(collection, dimension)
    }

    async fn upsert(&self, collection: &str, points: Vec<PointRecord>) -> Result<(), StoreError> {
        let name = collection.to_string();
        self.with(collection, move |c| {
            check_points(&points, c.dimension, &name)?;
            let points = points
                .into_iter()
                .map(|p| {
                    let vector = p.vector.unwrap_or_default();
                    PointStruct::new(PointId::Uuid(p.id), vector, Value::Object(p.payload)).into()
                })
                .collect();
            c.write(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
        })
        .await
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &SignalFilter,
        limit: usize,
        with_payload: bool,
    ) -> Result<Vec<ScoredRecord>, StoreError> {
        let filter = qdrant_filter(filter)?;
        let name = collection.to_string();
        self.with(collection, move |c| {
            check_dimension(&vector, c.dimension, &name)?;
            let hits = c
                .shard
                .search(SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery {
                        query: vector.into(),
                        using: None,
                    }),
                    filter,
                    params: None,
                    limit,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                    with_vector: Some(WithVector::Bool(false)),
                    score_threshold: None,
                })
                .map_err(backend)?;
            hits.into_iter()
                .map(|hit| {
                    Ok(ScoredRecord {
                        id: uuid_of(hit.id)?,
                        score: hit.score,
                        payload: with_payload.then(|| payload_map(hit.payload)),
                    })
                })
                .collect()
        })
        .await
    }

    async fn retrieve(
        &self,
        collection: &str,
        ids: &[Uuid],
    ) -> Result<Vec<PointRecord>, StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::Uuid(*id)).collect();
        self.with(collection, move |c| {
            let records = c
                .shard
                .retrieve(
                    &ids,
                    Some(WithPayloadInterface::Bool(true)),
                    Some(WithVector::Bool(true)),
                )
                .map_err(backend)?;
            records
                .into_iter()
                .map(|r| {
                    Ok(PointRecord {
                        id: uuid_of(r.id)?,
                        vector: dense(r.vector),
                        payload: payload_map(r.payload),
                    })
                })
                .collect()
        })
        .await
    }

    async fn scroll(
        &self,
        collection: &str,
        filter: &SignalFilter,
        after: Option<Uuid>,
        limit: usize,
        with_vectors: bool,
    ) -> Result<(Vec<PointRecord>, Option<Uuid>), StoreError> {
        let filter = qdrant_filter(filter)?;
        self.with(collection, move |c| {
            let (records, next) = c
                .shard
                .scroll(ScrollRequest {
                    offset: after.map(PointId::Uuid),
                    limit: Some(limit),
                    filter,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(with_vectors),
                    order_by: None,
                })
                .map_err(backend)?;
            let records = records
                .into_iter()
                .map(|r| {
                    Ok(PointRecord {
                        id: uuid_of(r.id)?,
                        vector: dense(r.vector),
                        payload: payload_map(r.payload),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((records, next.map(uuid_of).transpose()?))
        })
        .await
    }

    async fn count(&self, collection: &str, filter: &SignalFilter) -> Result<usize, StoreError> {
        let filter = qdrant_filter(filter)?;
        self.with(collection, move |c| {
            c.shard
                .count(CountRequest {
                    filter,
                    exact: true,
                })
                .map_err(backend)
        })
        .await
    }

    async fn set_payload(
        &self,
        collection: &str,
        updates: Vec<(Uuid, Map<String, Value>)>,
    ) -> Result<(), StoreError> {
        self.with(collection, move |c| {
            c.write_all(updates.into_iter().map(|(id, payload)| {
                UpdateOperation::PayloadOperation(PayloadOps::SetPayload(SetPayloadOp {
                    payload: payload.into(),
                    points: Some(vec![PointId::Uuid(id)]),
                    filter: None,
                    key: None,
                }))
            }))
        })
        .await
    }

    async fn delete(&self, collection: &str, filter: &SignalFilter) -> Result<(), StoreError> {
        let Some(filter) = qdrant_filter(filter)? else {
            return Err(StoreError::Filter(
                "refusing to delete with an empty filter".into(),
            ));
        };
        self.with(collection, move |c| {
            c.write(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(filter),
            ))
        })
        .await
    }

    async fn delete_ids(&self, collection: &str, ids: &[Uuid]) -> Result<(), StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::Uuid(*id)).collect();
        self.with(collection, move |c| {
            c.write(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
        })
        .await
    }

    async fn maintain(&self, idle: Duration) -> Result<(), StoreError> {
        let names: Vec<String> = self.collections.lock().keys().cloned().collect();
        for name in names {
            let started = Instant::now();
            let optimized = self.with(&name, move |c| c.optimize_if_idle(idle)).await?;
            if optimized {
                tracing::info!(collection = %name, seconds = started.elapsed().as_secs_f64(), "collection optimised");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn optimising_an_idle_collection_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.ensure_collection("c", 4).await.unwrap();
        let points: Vec<PointRecord> = (0..3000u32)
            .map(|i| {
                let Value::Object(payload) = json!({"brand": "b", "ts": i}) else {
                    unreachable!()
                };
                let x = i as f32;
                PointRecord {
                    id: Uuid::new_v5(&Uuid::NAMESPACE_OID, &i.to_le_bytes()),
                    vector: Some(vec![x.sin(), x.cos(), 1.0, (x / 7.0).sin()]),
                    payload,
                }
            })
            .collect();
        store.upsert("c", points.clone()).await.unwrap();
        // Written just now: an hour of idleness is not there yet.
        store.maintain(Duration::from_secs(3600)).await.unwrap();
        assert!(store.collection("c").unwrap().dirty.load(Ordering::Acquire));
        store.maintain(Duration::ZERO).await.unwrap();
        assert!(!store.collection("c").unwrap().dirty.load(Ordering::Acquire));
        assert_eq!(
            store.count("c", &SignalFilter::default()).await.unwrap(),
            3000
        );
        let hits = store
            .search(
                "c",
                points[42].vector.clone().unwrap(),
                &SignalFilter::default(),
                1,
                false,
            )
            .await
            .unwrap();
        assert_eq!(hits[0].id, points[42].id);
    }
}
