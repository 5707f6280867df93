//! `pulse.v1.SignalService`: brand signals in, embedded, stored with their
//! payload; similarity search, lookup, delete and count on top.

use crate::auth::{Access, Quota};
use crate::batcher::Priority;
use crate::grpc::status_of;
use crate::models::{EmbedOptions, Registry, ServedModel};
use futures::StreamExt;
use pulse_proto::v1 as pb;
use pulse_proto::validate::{self, millis, timestamp};
use pulse_store::{PointRecord, SignalFilter, StoreError, VectorStore};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

/// Signals one stream writes at a time.
const STREAM_CHUNK: usize = 256;
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 1000;

/// The namespace of signal point ids: UUIDv5 of (brand, id) within it.
static SIGNAL_NAMESPACE: LazyLock<Uuid> =
    LazyLock::new(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:pulse:signal"));

/// The store's id for signal `id` of `brand`: a re-sent signal lands on
/// the same point and replaces it.
pub fn point_id(brand: &str, id: &str) -> Uuid {
    // The brand's length keeps ("ab", "c") and ("a", "bc") apart.
    let key = format!("{}:{brand}{id}", brand.len());
    Uuid::new_v5(&SIGNAL_NAMESPACE, key.as_bytes())
}

pub use pulse_store::{model_slug, signal_collection as collection_name};

#[derive(Debug, Clone)]
pub struct SignalLimits {
    pub max_signals: usize,
    pub max_text_bytes: usize,
}

#[derive(Clone)]
pub struct SignalApi {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn VectorStore>,
    pub limits: SignalLimits,
}

pub(crate) fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::NoCollection(_) => Status::not_found(err.to_string()),
        StoreError::Dimension { .. } | StoreError::Filter(_) | StoreError::InvalidPoint { .. } => {
            Status::invalid_argument(err.to_string())
        }
        StoreError::Backend(_) => Status::unavailable(err.to_string()),
    }
}

fn filter_of(filter: Option<pb::SignalFilter>) -> Result<SignalFilter, Status> {
    let filter = filter.unwrap_or_default();
    let (ts_from, ts_to) = validate::time_range(
        filter.ts_from.as_ref(),
        filter.ts_to.as_ref(),
        ["ts_from", "ts_to"],
    )?;
    Ok(SignalFilter {
        brand: (!filter.brand.is_empty()).then_some(filter.brand),
        sources: filter.sources,
        ts_from,
        ts_to,
        fields: Vec::new(),
    })
}

pub(crate) fn stored_signal(payload: &Map<String, Value>) -> pb::StoredSignal {
    let text = |key: &str| {
        payload
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let attributes = payload
        .get("attributes")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    pb::StoredSignal {
        signal: Some(pb::Signal {
            id: text("signal_id"),
            brand: text("brand"),
            source: text("source"),
            text: text("text"),
            ts: payload.get("ts").and_then(Value::as_i64).map(timestamp),
            url: text("url"),
            lang: text("lang"),
            attributes,
        }),
        model: text("model"),
        model_revision: text("model_revision"),
    }
}

impl SignalApi {
    fn model(&self, name: &str) -> Result<Arc<ServedModel>, Status> {
        self.registry
            .find(name)
            .map_err(|e| Status::not_found(e.to_string()))
    }

    /// The model's collection, created first if the store lacks it (a
    /// remote store that was down at start gets it on first use).
    async fn collection(&self, model: &ServedModel) -> Result<String, Status> {
        let name = collection_name(&model.name);
        self.store
            .ensure_collection(&name, model.info().dimension)
            .await
            .map_err(store_status)?;
        Ok(name)
    }

    /// Embeds and stores `signals`; one result per signal, in order. The
    /// call returns after the store confirmed every stored signal.
    async fn ingest(
        &self,
        model: &ServedModel,
        signals: Vec<pb::Signal>,
        quota: Option<Arc<Quota>>,
    ) -> Result<Vec<pb::SignalResult>, Status> {
        let mut results: Vec<pb::SignalResult> = signals
            .iter()
            .map(|s| pb::SignalResult {
                id: s.id.clone(),
                point_id: if s.brand.is_empty() || s.id.is_empty() {
                    String::new()
                } else {
                    point_id(&s.brand, &s.id).to_string()
                },
                stored: false,
                rejection: validate::signal_rejection(s, self.limits.max_text_bytes)
                    .unwrap_or_default(),
            })
            .collect();
        let accepted: Vec<usize> = (0..signals.len())
            .filter(|&i| results[i].rejection.is_empty())
            .collect();
        if accepted.is_empty() {
            return Ok(results);
        }
        let texts: Vec<String> = accepted.iter().map(|&i| signals[i].text.clone()).collect();
        let options = EmbedOptions {
            normalize: Some(true),
            truncate: true,
            priority: Priority::Bulk,
            deadline: None,
            quota,
            prompt: None,
        };
        let outcome = model.embed(texts, &options).await.map_err(status_of)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let revision = model.info().revision.clone().unwrap_or_default();
        let mut points = Vec::new();
        let mut stored = Vec::new();
        for (&index, item) in accepted.iter().zip(outcome.items) {
            let embedded = match item {
                Ok(embedded) => embedded,
                Err(e) => {
                    results[index].rejection = e.message;
                    continue;
                }
            };
            let signal = &signals[index];
            let payload = json!({
                "signal_id": signal.id,
                "brand": signal.brand,
                "source": signal.source,
                "text": signal.text,
                "ts": signal.ts.as_ref().and_then(millis).unwrap_or(now),
                "url": signal.url,
                "lang": signal.lang,
                "attributes": signal.attributes,
                "truncated": embedded.truncated,
                "model": model.name,
                "model_revision": revision,
            });
            let Value::Object(payload) = payload else {
                continue;
            };
            points.push(PointRecord {
                id: point_id(&signal.brand, &signal.id),
                vector: Some(embedded.vector),
                payload,
            });
            stored.push(index);
        }
        if !points.is_empty() {
            let collection = self.collection(model).await?;
            self.store
                .upsert(&collection, points)
                .await
                .map_err(store_status)?;
        }
        metrics::counter!("pulse_signals_stored_total", "model" => model.name.clone())
            .increment(stored.len() as u64);
        for index in stored {
            results[index].stored = true;
        }
        let rejected = results.iter().filter(|r| !r.stored).count();
        metrics::counter!("pulse_signals_rejected_total", "model" => model.name.clone())
            .increment(rejected as u64);
        Ok(results)
    }
}

/// The brand a request's filter names ("" when none).
fn filter_brand(filter: &Option<pb::SignalFilter>) -> &str {
    filter.as_ref().map_or("", |f| f.brand.as_str())
}

#[tonic::async_trait]
impl pb::signal_service_server::SignalService for SignalApi {
    async fn ingest(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let access = Access::of(&request);
        let quota = Quota::of(&request);
        let request = request.into_inner();
        for signal in &request.signals {
            access.allow(&signal.brand)?;
        }
        validate::item_count(request.signals.len(), self.limits.max_signals, "signals")?;
        let model = self.model(&request.model)?;
        let results = SignalApi::ingest(self, &model, request.signals, quota).await?;
        let stored = results.iter().filter(|r| r.stored).count() as u32;
        Ok(Response::new(pb::IngestResponse {
            rejected: results.len() as u32 - stored,
            stored,
            results,
        }))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<pb::Signal>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let model = self.model(
            request
                .metadata()
                .get("pulse-model")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )?;
        let access = Access::of(&request);
        let quota = Quota::of(&request);
        let mut incoming = request.into_inner().ready_chunks(STREAM_CHUNK);
        let mut summary = pb::IngestSummary::default();
        while let Some(chunk) = incoming.next().await {
            let signals = chunk.into_iter().collect::<Result<Vec<_>, Status>>()?;
            for signal in &signals {
                access.allow(&signal.brand)?;
            }
            for result in SignalApi::ingest(self, &model, signals, quota.clone()).await? {
                if result.stored {
                    summary.stored += 1;
                } else {
                    summary.rejected += 1;
                    summary.rejections.push(result);
                }
            }
        }
        Ok(Response::new(summary))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let access = Access::of(&request);
        let quota = Quota::of(&request);
        let request = request.into_inner();
        access.allow(filter_brand(&request.filter))?;
        let model = self.model(&request.model)?;
        let filter = filter_of(request.filter)?;
        let vector = match request.query {
            Some(pb::search_request::Query::Text(text)) => {
                if text.trim().is_empty() {
                    return Err(Status::invalid_argument("the query text is empty"));
                }
                let options = EmbedOptions {
                    normalize: Some(true),
                    truncate: true,
                    priority: Priority::Interactive,
                    deadline: None,
                    quota,
                    prompt: None,
                };
                let outcome = model.embed(vec![text], &options).await.map_err(status_of)?;
                match outcome.items.into_iter().next() {
                    Some(Ok(embedded)) => embedded.vector,
                    Some(Err(e)) => return Err(Status::invalid_argument(e.message)),
                    None => return Err(Status::internal("no embedding for the query")),
                }
            }
            Some(pb::search_request::Query::Vector(vector)) => {
                validate::query_vector(&vector.values, model.info().dimension, &model.name)?;
                vector.values
            }
            None => return Err(Status::invalid_argument("give a query text or vector")),
        };
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let collection = self.collection(&model).await?;
        let hits = self
            .store
            .search(
                &collection,
                vector,
                &filter,
                limit as usize,
                request.with_payload,
            )
            .await
            .map_err(store_status)?;
        let hits = hits
            .into_iter()
            .map(|hit| pb::SearchHit {
                point_id: hit.id.to_string(),
                score: hit.score,
                signal: hit.payload.as_ref().map(stored_signal),
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { hits }))
    }

    async fn get_signals(
        &self,
        request: Request<pb::GetSignalsRequest>,
    ) -> Result<Response<pb::GetSignalsResponse>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        if request.brand.is_empty() {
            return Err(Status::invalid_argument("`brand` is required"));
        }
        access.allow(&request.brand)?;
        let model = self.model(&request.model)?;
        let ids: Vec<Uuid> = request
            .ids
            .iter()
            .map(|id| point_id(&request.brand, id))
            .collect();
        let collection = self.collection(&model).await?;
        let found = self
            .store
            .retrieve(&collection, &ids)
            .await
            .map_err(store_status)?;
        let by_id: HashMap<Uuid, &PointRecord> = found.iter().map(|p| (p.id, p)).collect();
        let signals = ids
            .iter()
            .filter_map(|id| by_id.get(id).map(|p| stored_signal(&p.payload)))
            .collect();
        Ok(Response::new(pb::GetSignalsResponse { signals }))
    }

    async fn delete_signals(
        &self,
        request: Request<pb::DeleteSignalsRequest>,
    ) -> Result<Response<pb::DeleteSignalsResponse>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        if request.ids.is_empty() {
            access.allow(filter_brand(&request.filter))?;
        } else {
            access.allow(&request.brand)?;
        }
        let model = self.model(&request.model)?;
        let collection = self.collection(&model).await?;
        let deleted = if !request.ids.is_empty() {
            if request.brand.is_empty() {
                return Err(Status::invalid_argument(
                    "deleting by ids needs the `brand`",
                ));
            }
            let ids: Vec<Uuid> = request
                .ids
                .iter()
                .map(|id| point_id(&request.brand, id))
                .collect();
            let existing = self
                .store
                .retrieve(&collection, &ids)
                .await
                .map_err(store_status)?
                .len();
            self.store
                .delete_ids(&collection, &ids)
                .await
                .map_err(store_status)?;
            existing
        } else {
            let filter = filter_of(request.filter)?;
            if filter == SignalFilter::default() {
                return Err(Status::invalid_argument(
                    "give ids or a filter that restricts something",
                ));
            }
            let matching = self
                .store
                .count(&collection, &filter)
                .await
                .map_err(store_status)?;
            self.store
                .delete(&collection, &filter)
                .await
                .map_err(store_status)?;
            matching
        };
        Ok(Response::new(pb::DeleteSignalsResponse {
            deleted: deleted as u64,
        }))
    }

    async fn count_signals(
        &self,
        request: Request<pb::CountSignalsRequest>,
    ) -> Result<Response<pb::CountSignalsResponse>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        access.allow(filter_brand(&request.filter))?;
        let model = self.model(&request.model)?;
        let filter = filter_of(request.filter)?;
        let collection = self.collection(&model).await?;
        let count = self
            .store
            .count(&collection, &filter)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::CountSignalsResponse {
            count: count as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_distinct() {
        assert_eq!(point_id("nike", "1"), point_id("nike", "1"));
        assert_ne!(point_id("nike", "1"), point_id("nike", "2"));
        assert_ne!(point_id("ab", "c"), point_id("a", "bc"));
        assert_eq!(point_id("nike", "1").get_version_num(), 5);
    }

    #[test]
    fn collections_are_named_after_models() {
        assert_eq!(
            collection_name("sentence-transformers/all-MiniLM-L6-v2"),
            "signals__sentence-transformers-all-minilm-l6-v2"
        );
    }
}
