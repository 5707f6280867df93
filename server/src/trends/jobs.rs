//! Re-clustering jobs: queued per (brand, model) so one runs at a time for
//! each, and at most `concurrency` at once overall (clustering takes every
//! core it is given). A job loads the window's vectors from the store,
//! clusters them, summarises the trends, gives them stable ids, writes each
//! signal's label and stores the run. Jobs live in memory: a restart
//! forgets them, not the runs they stored.

use super::records::{self, LlmRecord, ParamsRecord, RepresentativeRecord, RunRecord, TrendRecord};
use crate::summaries::{self, Summariser};
use parking_lot::Mutex;
use pulse_models::Device;
use pulse_proto::v1 as pb;
use pulse_store::{PointRecord, SignalFilter, StoreError, VectorStore};
use pulse_trends::Metric;
use pulse_trends::lineage::{self, MatchThresholds, Origin, PreviousTrend};
use pulse_trends::pipeline::{self, PipelineError, PipelineParams};
use pulse_trends::summary::{self, SignalFacts, SummaryParams};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

/// Ended jobs remembered for `GetJob` and idempotency keys.
const ENDED_JOBS_KEPT: usize = 1000;
/// Labels written per store call.
const LABEL_CHUNK: usize = 1000;
const PAGE: usize = 1000;
const REPRESENTATIVES: usize = 5;
const KEYWORDS: usize = 10;
const BUCKETS: usize = 12;

/// What to cluster and how.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub brand: String,
    pub model: String,
    pub dimension: usize,
    /// Inclusive, Unix milliseconds.
    pub window: (i64, i64),
    /// The trend pipeline's parameters; signals are always compared by
    /// cosine.
    pub params: PipelineParams,
    /// Where the nearest-neighbour pass runs: the model's device, so a
    /// server on a GPU clusters there too.
    pub device: Device,
    pub requested: ParamsRecord,
    pub idempotency_key: String,
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("cancelled")]
    Cancelled,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("clustering: {0}")]
    Clustering(#[from] PipelineError),
    #[error("{0}")]
    Internal(String),
}

struct JobHandle {
    status: watch::Sender<pb::Job>,
    cancel: watch::Sender<bool>,
}

#[derive(Default)]
struct JobTable {
    jobs: HashMap<String, Arc<JobHandle>>,
    /// (brand, model, idempotency key) → job id.
    keys: HashMap<(String, String, String), String>,
    /// Per (brand, model), the last job's "done" signal: each job waits
    /// for the one submitted before it, so a brand's jobs run one after
    /// another in the order they were submitted (the order tasks first run
    /// in is not that order).
    lanes: HashMap<(String, String), watch::Receiver<bool>>,
    ended: VecDeque<String>,
}

/// A job's place in its (brand, model) lane.
struct Turn {
    previous: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
}

impl Turn {
    async fn wait_for_previous(&mut self) {
        if let Some(previous) = &mut self.previous {
            // An error means the previous job's task is gone: its turn is over.
            let _ = previous.wait_for(|done| *done).await;
        }
    }
}

/// The job queue of a server.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn VectorStore>,
    table: Arc<Mutex<JobTable>>,
    slots: Arc<Semaphore>,
    summaries: Option<Summariser>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn ended(state: i32) -> bool {
    [
        pb::JobState::Succeeded,
        pb::JobState::Failed,
        pb::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

impl Jobs {
    /// `summaries`: where finished trends go for LLM summaries; `None`
    /// when no provider is configured.
    pub fn new(
        store: Arc<dyn VectorStore>,
        concurrency: usize,
        summaries: Option<Summariser>,
    ) -> Self {
        Jobs {
            store,
            table: Arc::default(),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            summaries,
        }
    }

    pub fn summaries(&self) -> Option<&Summariser> {
        self.summaries.as_ref()
    }

    /// Queues a job, or returns the one this idempotency key already made.
    pub fn submit(&self, spec: JobSpec) -> pb::Job {
        let mut table = self.table.lock();
        let key = (
            spec.brand.clone(),
            spec.model.clone(),
            spec.idempotency_key.clone(),
        );
        if !spec.idempotency_key.is_empty()
            && let Some(job) = table.keys.get(&key).and_then(|id| table.jobs.get(id))
        {
            return job.status.borrow().clone();
        }
        let id = Uuid::new_v4().to_string();
        let job = pb::Job {
            id: id.clone(),
            brand: spec.brand.clone(),
            model: spec.model.clone(),
            state: pb::JobState::Queued as i32,
            window_from: Some(pulse_proto::validate::timestamp(spec.window.0)),
            window_to: Some(pulse_proto::validate::timestamp(spec.window.1)),
            created: Some(pulse_proto::validate::timestamp(now_ms())),
            idempotency_key: spec.idempotency_key.clone(),
            ..Default::default()
        };
        let handle = Arc::new(JobHandle {
            status: watch::Sender::new(job.clone()),
            cancel: watch::Sender::new(false),
        });
        table.jobs.insert(id.clone(), handle.clone());
        if !spec.idempotency_key.is_empty() {
            table.keys.insert(key, id.clone());
        }
        let (done, done_signal) = watch::channel(false);
        let previous = table
            .lanes
            .insert((spec.brand.clone(), spec.model.clone()), done_signal);
        drop(table);
        metrics::counter!("pulse_trend_jobs_submitted_total").increment(1);
        tokio::spawn(self.clone().run(spec, handle, Turn { previous, done }));
        job
    }

    pub fn get(&self, id: &str) -> Option<pb::Job> {
        let table = self.table.lock();
        table.jobs.get(id).map(|job| job.status.borrow().clone())
    }

    /// The job's status now and at every change.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<pb::Job>> {
        let table = self.table.lock();
        table.jobs.get(id).map(|job| job.status.subscribe())
    }

    /// Asks the job to stop and waits (a little) until it has.
    pub async fn cancel(&self, id: &str) -> Option<pb::Job> {
        let handle = self.table.lock().jobs.get(id).cloned()?;
        handle.cancel.send_replace(true);
        let mut status = handle.status.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|job| ended(job.state)),
        )
        .await;
        let job = handle.status.borrow().clone();
        Some(job)
    }

    async fn run(self, spec: JobSpec, handle: Arc<JobHandle>, mut turn: Turn) {
        let mut cancelled = handle.cancel.subscribe();
        let started = tokio::select! {
            slot = async {
                turn.wait_for_previous().await;
                self.slots.clone().acquire_owned().await
            } => Some(slot),
            _ = cancelled.wait_for(|c| *c) => None,
        };
        let outcome = match started {
            None => Err(JobError::Cancelled),
            Some(Ok(_slot)) => {
                handle.status.send_modify(|job| {
                    job.state = pb::JobState::Running as i32;
                    job.stage = pb::JobStage::Loading as i32;
                    job.started = Some(pulse_proto::validate::timestamp(now_ms()));
                });
                let work = execute(
                    self.store.as_ref(),
                    self.summaries.as_ref(),
                    &spec,
                    &handle.status,
                    cancelled.clone(),
                );
                tokio::select! {
                    outcome = work => outcome,
                    _ = cancelled.wait_for(|c| *c) => Err(JobError::Cancelled),
                }
            }
            Some(Err(_)) => Err(JobError::Internal("the job queue was closed".into())),
        };
        let (state, error) = match &outcome {
            Ok(()) => (pb::JobState::Succeeded, String::new()),
            Err(JobError::Cancelled) => (pb::JobState::Cancelled, "cancelled".to_string()),
            Err(err) => (pb::JobState::Failed, err.to_string()),
        };
        if let Err(err) = &outcome {
            tracing::warn!(brand = %spec.brand, model = %spec.model, error = %err, "re-cluster job did not finish");
        }
        metrics::counter!("pulse_trend_jobs_total", "outcome" => state.as_str_name()).increment(1);
        let id = handle.status.borrow().id.clone();
        handle.status.send_modify(|job| {
            job.state = state as i32;
            job.error = error;
            job.finished = Some(pulse_proto::validate::timestamp(now_ms()));
        });
        self.remember_ended(id);
        // A job cancelled while queued still hands on its turn only after
        // the job before it: the next one must not overtake that.
        turn.wait_for_previous().await;
        turn.done.send_replace(true);
    }

    /// Keeps the newest ended jobs only.
    fn remember_ended(&self, id: String) {
        let mut table = self.table.lock();
        table.ended.push_back(id);
        while table.ended.len() > ENDED_JOBS_KEPT {
            if let Some(old) = table.ended.pop_front() {
                table.jobs.remove(&old);
                table.keys.retain(|_, id| *id != old);
            }
        }
    }
}

/// The window's signals as clustering needs them.
#[derive(Default)]
struct Window {
    ids: Vec<Uuid>,
    vectors: Vec<f32>,
    payloads: Vec<Map<String, Value>>,
}

fn text<'a>(payload: &'a Map<String, Value>, key: &str) -> &'a str {
    payload.get(key).and_then(Value::as_str).unwrap_or_default()
}

async fn load(
    store: &dyn VectorStore,
    spec: &JobSpec,
    status: &watch::Sender<pb::Job>,
    cancelled: &watch::Receiver<bool>,
) -> Result<Window, JobError> {
    let collection = crate::signals::collection_name(&spec.model);
    store.ensure_collection(&collection, spec.dimension).await?;
    let filter = SignalFilter {
        brand: Some(spec.brand.clone()),
        ts_from: Some(spec.window.0),
        ts_to: Some(spec.window.1),
        ..Default::default()
    };
    let mut window = Window::default();
    let mut after = None;
    loop {
        if *cancelled.borrow() {
            return Err(JobError::Cancelled);
        }
        let (page, next) = store
            .scroll(&collection, &filter, after, PAGE, true)
            .await?;
        for point in page {
            let PointRecord {
                id,
                vector,
                payload,
            } = point;
            let vector = vector
                .filter(|v| v.len() == spec.dimension)
                .ok_or_else(|| {
                    JobError::Internal(format!(
                        "signal point {id} has no {}-dimensional vector",
                        spec.dimension
                    ))
                })?;
            window.ids.push(id);
            window.vectors.extend(vector);
            window.payloads.push(payload);
        }
        let loaded = window.ids.len() as u64;
        status.send_modify(|job| job.signals = loaded);
        match next {
            Some(next) => after = Some(next),
            None => return Ok(window),
        }
    }
}

async fn execute(
    store: &dyn VectorStore,
    summariser: Option<&Summariser>,
    spec: &JobSpec,
    status: &watch::Sender<pb::Job>,
    cancelled: watch::Receiver<bool>,
) -> Result<(), JobError> {
    let previous = records::latest_run(store, &spec.model, spec.dimension, &spec.brand).await?;
    let previous_trends = match &previous {
        Some(run) => records::trends_of(store, run, spec.dimension).await?,
        None => Vec::new(),
    };
    let window = load(store, spec, status, &cancelled).await?;
    let n = window.ids.len();

    status.send_modify(|job| job.stage = pb::JobStage::Clustering as i32);
    let vectors = Arc::new(window.vectors);
    let payloads = Arc::new(window.payloads);
    let found = if n < 2 {
        // Nothing to group: every signal (if any) is noise.
        None
    } else {
        let (data, payloads) = (vectors.clone(), payloads.clone());
        let mut params = spec.params.clone();
        params.hdbscan.metric = Metric::Cosine;
        let dim = spec.dimension;
        let device = spec.device.clone();
        let trends = tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = payloads.iter().map(|p| text(p, "text")).collect();
            pipeline::find_trends(&data, dim, &texts, &params, &device)
        })
        .await
        .map_err(|e| JobError::Internal(format!("clustering stopped: {e}")))??;
        tracing::info!(
            brand = %spec.brand, signals = n, trends = trends.n_trends,
            assigned = trends.assigned.iter().filter(|a| a.is_some()).count(),
            merged = trends.merged,
            seconds = trends.timings.total().as_secs_f64(), "clustered"
        );
        Some(trends)
    };
    let (labels, probabilities, assigned) = match found {
        Some(t) => (t.labels, t.probabilities, t.assigned),
        None => (vec![-1; n], vec![0.0; n], vec![None; n]),
    };
    finish(
        store,
        summariser,
        spec,
        status,
        &cancelled,
        Clustered {
            ids: window.ids,
            vectors,
            payloads,
            labels,
            probabilities,
            assigned,
        },
        Previous {
            run: previous,
            trends: previous_trends,
        },
    )
    .await
}

/// The brand's last finished run, if any, and its trends.
struct Previous {
    run: Option<RunRecord>,
    trends: Vec<TrendRecord>,
}

struct Clustered {
    ids: Vec<Uuid>,
    vectors: Arc<Vec<f32>>,
    payloads: Arc<Vec<Map<String, Value>>>,
    labels: Vec<i32>,
    probabilities: Vec<f32>,
    /// The assignment's score of members HDBSCAN called noise.
    assigned: Vec<Option<f32>>,
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::New => "new",
        Origin::Continued => "continued",
        Origin::Split => "split",
        Origin::Merged => "merged",
    }
}

/// Summarises, names and stores what clustering found.
async fn finish(
    store: &dyn VectorStore,
    summariser: Option<&Summariser>,
    spec: &JobSpec,
    status: &watch::Sender<pb::Job>,
    cancelled: &watch::Receiver<bool>,
    clustered: Clustered,
    previous: Previous,
) -> Result<(), JobError> {
    let Previous {
        run: previous,
        trends: previous_trends,
    } = previous;
    if *cancelled.borrow() {
        return Err(JobError::Cancelled);
    }
    status.send_modify(|job| job.stage = pb::JobStage::Summarising as i32);
    let Clustered {
        ids,
        vectors,
        payloads,
        labels,
        probabilities,
        assigned,
    } = clustered;
    let dim = spec.dimension;
    // Tokenising every text for the keywords takes seconds on a large
    // window: off the runtime's threads, like the clustering.
    let summaries = {
        let (vectors, payloads) = (vectors.clone(), payloads.clone());
        let (labels, probabilities) = (labels.clone(), probabilities.clone());
        let params = SummaryParams {
            representatives: REPRESENTATIVES,
            keywords: KEYWORDS,
            buckets: BUCKETS,
            window: spec.window,
        };
        tokio::task::spawn_blocking(move || {
            let facts: Vec<SignalFacts<'_>> = payloads
                .iter()
                .map(|p| SignalFacts {
                    text: text(p, "text"),
                    source: text(p, "source"),
                    ts: p
                        .get("ts")
                        .and_then(Value::as_i64)
                        .unwrap_or(params.window.0),
                })
                .collect();
            summary::summarise(&vectors, dim, &facts, &labels, &probabilities, &params)
        })
        .await
        .map_err(|e| JobError::Internal(format!("summarising stopped: {e}")))?
    };

    // A label counts as the previous run's only if that run wrote it.
    let previous_run_id = previous.as_ref().map(|r| r.run_id.as_str());
    let previous_labels: Vec<Option<i64>> = payloads
        .iter()
        .map(|p| {
            let run = p.get("cluster_run").and_then(Value::as_str);
            let label = p.get("cluster").and_then(Value::as_i64);
            label.filter(|&l| l >= 0 && run.is_some() && run == previous_run_id)
        })
        .collect();
    let old: Vec<PreviousTrend> = previous_trends
        .iter()
        .map(|t| PreviousTrend {
            id: t.trend_id,
            centroid: t.centroid.clone(),
        })
        .collect();
    let mut next_id = previous.as_ref().map_or(1, |r| r.next_trend_id);
    let centroids: Vec<Vec<f32>> = summaries.iter().map(|s| s.centroid.clone()).collect();
    let identities = lineage::assign_ids(
        &centroids,
        &labels,
        &previous_labels,
        &old,
        &MatchThresholds::default(),
        &mut next_id,
    );

    let mut assigned_per_trend = vec![0u64; summaries.len()];
    for (&label, score) in labels.iter().zip(&assigned) {
        if let (Ok(l), Some(_)) = (usize::try_from(label), score) {
            assigned_per_trend[l] += 1;
        }
    }
    let run_id = status.borrow().id.clone();
    let mut trends: Vec<TrendRecord> = summaries
        .into_iter()
        .zip(&identities)
        .zip(&assigned_per_trend)
        .map(|((s, identity), &assigned)| TrendRecord {
            trend_id: identity.id,
            brand: spec.brand.clone(),
            model: spec.model.clone(),
            run_id: run_id.clone(),
            size: s.size as u64,
            assigned,
            representatives: s
                .representatives
                .iter()
                .map(|r| RepresentativeRecord {
                    signal_id: text(&payloads[r.index], "signal_id").to_string(),
                    point_id: ids[r.index],
                    text: text(&payloads[r.index], "text").to_string(),
                    probability: r.probability,
                    similarity: r.similarity,
                })
                .collect(),
            keywords: s.keywords.into_iter().map(|k| (k.term, k.score)).collect(),
            sources: s
                .sources
                .into_iter()
                .map(|(source, count)| (source, count as u64))
                .collect(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            buckets: s.buckets,
            bucket_width_ms: s.bucket_width_ms,
            growth: s.growth,
            origin: origin_name(identity.origin).to_string(),
            parents: identity.parents.clone(),
            centroid: s.centroid,
            llm: None,
        })
        .collect();
    let new_labels: Vec<Option<i64>> = labels
        .iter()
        .map(|&l| usize::try_from(l).ok().map(|l| identities[l].id))
        .collect();
    let to_summarise = assign_summaries(
        summariser,
        &mut trends,
        &previous_trends,
        &previous_labels,
        &new_labels,
    );
    let noise = labels.iter().filter(|&&l| l < 0).count() as u64;
    status.send_modify(|job| {
        job.trends = trends.len() as u32;
        job.noise = noise;
        job.stage = pb::JobStage::Writing as i32;
    });

    let collection = crate::signals::collection_name(&spec.model);
    let updates: Vec<(Uuid, Map<String, Value>)> = ids
        .iter()
        .zip(&labels)
        .zip(&probabilities)
        .zip(&assigned)
        .map(|(((&id, &label), &probability), &score)| {
            let trend_id = usize::try_from(label).map_or(-1, |l| identities[l].id);
            let mut keys = Map::new();
            keys.insert("cluster".into(), json!(trend_id));
            keys.insert("cluster_prob".into(), json!(probability));
            // Written for every signal, so no earlier run's score lingers.
            keys.insert("cluster_assigned".into(), json!(score));
            keys.insert("cluster_run".into(), json!(run_id));
            (id, keys)
        })
        .collect();
    let mut written = 0u64;
    for chunk in updates.chunks(LABEL_CHUNK) {
        if *cancelled.borrow() {
            return Err(JobError::Cancelled);
        }
        store.set_payload(&collection, chunk.to_vec()).await?;
        written += chunk.len() as u64;
        status.send_modify(|job| job.written = written);
    }

    let finished_ms = now_ms().max(previous.as_ref().map_or(0, |r| r.finished_ms + 1));
    let run = RunRecord {
        run_id: run_id.clone(),
        job_id: run_id.clone(),
        brand: spec.brand.clone(),
        model: spec.model.clone(),
        finished_ms,
        window_from: spec.window.0,
        window_to: spec.window.1,
        signals: ids.len() as u64,
        noise,
        trends: trends.len() as u32,
        next_trend_id: next_id,
        params: spec.requested.clone(),
    };
    let direction = summary::unit_mean(vectors.chunks_exact(dim.max(1)), dim);
    records::save_run(store, dim, &run, &trends, &direction).await?;
    if let Some(summariser) = summariser {
        for trend_id in to_summarise {
            summariser
                .enqueue(summaries::Task {
                    brand: spec.brand.clone(),
                    model: spec.model.clone(),
                    dimension: dim,
                    run_id: run_id.clone(),
                    trend_id,
                    forced: false,
                })
                .await;
        }
    }
    status.send_modify(|job| {
        job.stage = pb::JobStage::Done as i32;
        job.run_id = run_id.clone();
    });
    Ok(())
}

/// Gives each trend its LLM summary record: "not configured" without a
/// provider; the previous run's summary when the trend kept its id and
/// changed too little (members and keywords) to need a new one; pending
/// otherwise. Returns the ids of the pending trends.
fn assign_summaries(
    summariser: Option<&Summariser>,
    trends: &mut [TrendRecord],
    previous_trends: &[TrendRecord],
    previous_labels: &[Option<i64>],
    new_labels: &[Option<i64>],
) -> Vec<i64> {
    let Some(summariser) = summariser else {
        let record = LlmRecord::not_configured(now_ms());
        for trend in trends {
            trend.llm = Some(record.clone());
        }
        return Vec::new();
    };
    let member_sets = |labels: &[Option<i64>]| {
        let mut sets: HashMap<i64, HashSet<usize>> = HashMap::new();
        for (i, label) in labels.iter().enumerate() {
            if let Some(id) = label {
                sets.entry(*id).or_default().insert(i);
            }
        }
        sets
    };
    let (before, after) = (member_sets(previous_labels), member_sets(new_labels));
    let none = HashSet::new();
    let keywords = |trend: &TrendRecord| -> HashSet<String> {
        trend
            .keywords
            .iter()
            .map(|(term, _)| term.clone())
            .collect()
    };
    let mut pending = Vec::new();
    for trend in trends {
        let previous = previous_trends
            .iter()
            .find(|p| p.trend_id == trend.trend_id)
            .filter(|p| {
                p.llm
                    .as_ref()
                    .is_some_and(|l| l.status == records::LlmStatus::Done)
            });
        let kept = previous.and_then(|previous| {
            let member_overlap = summaries::jaccard(
                before.get(&trend.trend_id).unwrap_or(&none),
                after.get(&trend.trend_id).unwrap_or(&none),
            );
            let keyword_overlap = summaries::jaccard(&keywords(previous), &keywords(trend));
            summaries::unchanged(member_overlap, keyword_overlap, summariser.config()).then(
                || {
                    let mut llm = previous.llm.clone()?;
                    if llm.reused_from_run.is_empty() {
                        llm.reused_from_run = previous.run_id.clone();
                    }
                    Some(llm)
                },
            )?
        });
        match kept {
            Some(llm) => {
                metrics::counter!("pulse_llm_summaries_total", "status" => "reused").increment(1);
                trend.llm = Some(llm);
            }
            None => {
                trend.llm = Some(summariser.pending());
                pending.push(trend.trend_id);
            }
        }
    }
    pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_store::{EmbeddedStore, ScoredRecord};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    const DIM: usize = 8;

    /// The embedded store, with scrolls that can be held back and label
    /// writes that can be made to fail.
    struct Faulty {
        inner: EmbeddedStore,
        hold_scrolls: AtomicBool,
        released: Notify,
        fail_labels: AtomicBool,
    }

    #[async_trait::async_trait]
    impl VectorStore for Faulty {
        async fn collections(&self) -> Result<Vec<(String, usize)>, StoreError> {
            self.inner.collections().await
        }
        async fn ensure_collection(&self, c: &str, d: usize) -> Result<(), StoreError> {
            self.inner.ensure_collection(c, d).await
        }
        async fn upsert(&self, c: &str, p: Vec<PointRecord>) -> Result<(), StoreError> {
            self.inner.upsert(c, p).await
        }
        async fn search(
            &self,
            c: &str,
            v: Vec<f32>,
            f: &SignalFilter,
            l: usize,
            w: bool,
        ) -> Result<Vec<ScoredRecord>, StoreError> {
            self.inner.search(c, v, f, l, w).await
        }
        async fn retrieve(&self, c: &str, ids: &[Uuid]) -> Result<Vec<PointRecord>, StoreError> {
            self.inner.retrieve(c, ids).await
        }
        async fn scroll(
            &self,
            c: &str,
            f: &SignalFilter,
            after: Option<Uuid>,
            limit: usize,
            vectors: bool,
        ) -> Result<(Vec<PointRecord>, Option<Uuid>), StoreError> {
            if c.starts_with("signals__") && self.hold_scrolls.load(Ordering::Acquire) {
                self.released.notified().await;
            }
            self.inner.scroll(c, f, after, limit, vectors).await
        }
        async fn count(&self, c: &str, f: &SignalFilter) -> Result<usize, StoreError> {
            self.inner.count(c, f).await
        }
        async fn set_payload(
            &self,
            c: &str,
            updates: Vec<(Uuid, Map<String, Value>)>,
        ) -> Result<(), StoreError> {
            if self.fail_labels.load(Ordering::Acquire) {
                return Err(StoreError::Backend("disk full".into()));
            }
            self.inner.set_payload(c, updates).await
        }
        async fn delete(&self, c: &str, f: &SignalFilter) -> Result<(), StoreError> {
            self.inner.delete(c, f).await
        }
        async fn delete_ids(&self, c: &str, ids: &[Uuid]) -> Result<(), StoreError> {
            self.inner.delete_ids(c, ids).await
        }
    }

    /// Two tight groups of 10 signals each for `brand`, one per minute.
    async fn store_with_signals(brand: &str) -> (tempfile::TempDir, Arc<Faulty>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Faulty {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            hold_scrolls: AtomicBool::new(false),
            released: Notify::new(),
            fail_labels: AtomicBool::new(false),
        });
        let collection = crate::signals::collection_name("m");
        store.ensure_collection(&collection, DIM).await.unwrap();
        let points = (0..20)
            .map(|i| {
                let mut vector = vec![0.0f32; DIM];
                vector[if i < 10 { 0 } else { 1 }] = 1.0;
                // Distinct points: duplicates are a case of their own.
                vector[2 + i % 6] = 0.01 * (1 + i % 10) as f32;
                let text = if i < 10 {
                    "battery drains"
                } else {
                    "coffee tastes burnt"
                };
                signal(brand, &format!("s{i}"), vector, text, i as i64)
            })
            .collect();
        store.upsert(&collection, points).await.unwrap();
        (dir, store)
    }

    /// A stored signal of `brand`, `minute` minutes into the window.
    fn signal(brand: &str, id: &str, vector: Vec<f32>, text: &str, minute: i64) -> PointRecord {
        let Value::Object(payload) = json!({
            "signal_id": id,
            "brand": brand,
            "source": "x",
            "text": text,
            "ts": minute * 60_000,
        }) else {
            unreachable!()
        };
        PointRecord {
            id: crate::signals::point_id(brand, id),
            vector: Some(vector),
            payload,
        }
    }

    fn spec(brand: &str, key: &str) -> JobSpec {
        JobSpec {
            brand: brand.into(),
            model: "m".into(),
            dimension: DIM,
            window: (0, 20 * 60_000),
            params: PipelineParams::hdbscan_only(pulse_trends::Params::new(5)),
            device: Device::Cpu,
            requested: ParamsRecord::default(),
            idempotency_key: key.into(),
        }
    }

    async fn until_ended(jobs: &Jobs, id: &str) -> pb::Job {
        let mut status = jobs.watch(id).unwrap();
        tokio::time::timeout(Duration::from_secs(60), status.wait_for(|j| ended(j.state)))
            .await
            .expect("the job ends")
            .unwrap()
            .clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_labels_every_signal_and_stores_its_run() {
        let (_dir, store) = store_with_signals("acme").await;
        let jobs = Jobs::new(store.clone(), 1, None);
        let job = jobs.submit(spec("acme", "k1"));
        assert_eq!(
            jobs.submit(spec("acme", "k1")).id,
            job.id,
            "same key, same job"
        );
        let done = until_ended(&jobs, &job.id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        assert_eq!((done.signals, done.written, done.trends), (20, 20, 2));
        assert_eq!(done.run_id, job.id);

        let run = records::latest_run(store.as_ref(), "m", DIM, "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((run.signals, run.trends, run.next_trend_id), (20, 2, 3));
        let trends = records::trends_of(store.as_ref(), &run, DIM).await.unwrap();
        let mut keywords: Vec<&str> = trends.iter().map(|t| t.keywords[0].0.as_str()).collect();
        keywords.sort();
        assert_eq!(keywords, vec!["battery", "burnt"]);
        let labelled = store
            .count(
                &crate::signals::collection_name("m"),
                &SignalFilter {
                    fields: vec![(
                        "cluster_run".into(),
                        pulse_store::FieldValue::Keyword(job.id.clone()),
                    )],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(labelled, 20);

        // The same data again: the same trends, the same ids.
        let again = until_ended(&jobs, &jobs.submit(spec("acme", "k2")).id).await;
        assert_eq!(again.state, pb::JobState::Succeeded as i32);
        let rerun = records::latest_run(store.as_ref(), "m", DIM, "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rerun.run_id, again.id);
        let retrended = records::trends_of(store.as_ref(), &rerun, DIM)
            .await
            .unwrap();
        let ids = |t: &[TrendRecord]| {
            let mut ids: Vec<i64> = t.iter().map(|t| t.trend_id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&retrended), ids(&trends));
        assert!(retrended.iter().all(|t| t.origin == "continued"));
    }

    /// The trends of the brand's latest run.
    async fn latest_trends(store: &Faulty) -> Vec<TrendRecord> {
        let run = records::latest_run(store, "m", DIM, "acme")
            .await
            .unwrap()
            .expect("a finished run");
        records::trends_of(store, &run, DIM).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merged_trends_keep_their_ids_across_runs() {
        let (_dir, store) = store_with_signals("acme").await;
        let jobs = Jobs::new(store.clone(), 1, None);
        let mut merged = spec("acme", "");
        merged.params.merging.max_trends = Some(1);
        let done = until_ended(&jobs, &jobs.submit(merged.clone()).id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        assert_eq!(
            (done.trends, done.noise),
            (1, 0),
            "both groups in one trend"
        );
        let before = latest_trends(&store).await;
        assert_eq!(before[0].size, 20);

        let again = until_ended(&jobs, &jobs.submit(merged).id).await;
        assert_eq!(again.state, pb::JobState::Succeeded as i32);
        let after = latest_trends(&store).await;
        assert_eq!(after.len(), 1);
        assert_eq!(
            after[0].trend_id, before[0].trend_id,
            "the merged trend keeps its id"
        );
        assert_eq!(after[0].origin, "continued");

        // Unmerged, the two groups come apart: both new trends name the
        // merged one as their parent (a split).
        let split = until_ended(&jobs, &jobs.submit(spec("acme", "")).id).await;
        assert_eq!(split.trends, 2);
        let parts = latest_trends(&store).await;
        assert!(
            parts.iter().all(|t| t.parents == vec![before[0].trend_id]),
            "{:?}",
            parts
                .iter()
                .map(|t| (&t.origin, &t.parents))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn assigned_signals_are_marked_and_a_later_run_unmarks_them() {
        let (_dir, store) = store_with_signals("acme").await;
        let collection = crate::signals::collection_name("m");
        // The coffee group moved near the battery group (cosine 0.9), and
        // a signal farther from both than they are from each other (cosine
        // 0.5): HDBSCAN leaves it out, its centroid cosine takes it in.
        let mut points: Vec<PointRecord> = (10..20)
            .map(|i| {
                let mut vector = vec![0.0f32; DIM];
                (vector[0], vector[1]) = (0.9, 0.436);
                vector[2 + i % 6] = 0.01 * (1 + i % 10) as f32;
                signal(
                    "acme",
                    &format!("s{i}"),
                    vector,
                    "coffee tastes burnt",
                    i as i64,
                )
            })
            .collect();
        let mut between = vec![0.0f32; DIM];
        (between[0], between[1], between[7]) = (0.45, 0.2, 0.87);
        points.push(signal("acme", "between", between, "battery coffee", 5));
        store.upsert(&collection, points).await.unwrap();
        let between_id = crate::signals::point_id("acme", "between");
        let jobs = Jobs::new(store.clone(), 1, None);
        let scores = || async {
            let (points, _) = store
                .scroll(&collection, &SignalFilter::default(), None, 100, false)
                .await
                .unwrap();
            points
                .into_iter()
                .filter_map(|p| {
                    let score = p.payload.get("cluster_assigned")?.as_f64()?;
                    Some((p.id, score))
                })
                .collect::<Vec<_>>()
        };

        let mut assigning = spec("acme", "");
        assigning.params.assignment = Some(pipeline::AssignmentParams {
            by: pipeline::AssignBy::Centroid,
            threshold: 0.2,
        });
        let done = until_ended(&jobs, &jobs.submit(assigning).id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        assert_eq!((done.trends, done.noise), (2, 0));
        let trends = latest_trends(&store).await;
        assert_eq!(trends.iter().map(|t| t.assigned).sum::<u64>(), 1);
        assert_eq!(trends.iter().map(|t| t.size).sum::<u64>(), 21);
        let marked = scores().await;
        assert_eq!(marked.len(), 1, "{marked:?}");
        assert_eq!(marked[0].0, between_id);
        assert!((0.4..0.6).contains(&marked[0].1), "{marked:?}");

        // HDBSCAN alone: no signal keeps the earlier run's mark.
        let done = until_ended(&jobs, &jobs.submit(spec("acme", "")).id).await;
        assert_eq!((done.trends, done.noise), (2, 1));
        assert_eq!(scores().await, Vec::new());
        assert!(latest_trends(&store).await.iter().all(|t| t.assigned == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_and_single_signal_windows_succeed_without_trends() {
        let (_dir, store) = store_with_signals("acme").await;
        let jobs = Jobs::new(store.clone(), 1, None);
        let mut empty = spec("nobody", "");
        empty.window = (0, 10);
        let done = until_ended(&jobs, &jobs.submit(empty).id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        assert_eq!((done.signals, done.trends), (0, 0));
        let mut single = spec("acme", "");
        single.window = (0, 0);
        let done = until_ended(&jobs, &jobs.submit(single).id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        assert_eq!((done.signals, done.trends, done.noise), (1, 0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_job_per_brand_runs_the_others_queue_and_both_can_be_cancelled() {
        let (_dir, store) = store_with_signals("acme").await;
        store.hold_scrolls.store(true, Ordering::Release);
        let jobs = Jobs::new(store.clone(), 4, None);
        let first = jobs.submit(spec("acme", ""));
        let second = jobs.submit(spec("acme", ""));
        let mut status = jobs.watch(&first.id).unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|j| j.state == pb::JobState::Running as i32),
        )
        .await
        .expect("the first job submitted runs first")
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            jobs.get(&second.id).unwrap().state,
            pb::JobState::Queued as i32
        );

        let cancelled = jobs.cancel(&second.id).await.unwrap();
        assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
        let cancelled = jobs.cancel(&first.id).await.unwrap();
        assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
        assert!(jobs.cancel("no-such-job").await.is_none());
        store.released.notify_waiters();
        assert_eq!(
            records::latest_run(store.as_ref(), "m", DIM, "acme")
                .await
                .unwrap(),
            None,
            "a cancelled job stores no run"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_failure_fails_the_job_with_the_reason_and_stores_no_run() {
        let (_dir, store) = store_with_signals("acme").await;
        store.fail_labels.store(true, Ordering::Release);
        let jobs = Jobs::new(store.clone(), 1, None);
        let done = until_ended(&jobs, &jobs.submit(spec("acme", "")).id).await;
        assert_eq!(done.state, pb::JobState::Failed as i32);
        assert!(done.error.contains("disk full"), "{}", done.error);
        assert_eq!(done.stage, pb::JobStage::Writing as i32);
        assert_eq!(
            records::latest_run(store.as_ref(), "m", DIM, "acme")
                .await
                .unwrap(),
            None
        );
    }
}
