//! LLM summaries of trends, on a path of their own: a bounded queue fed when
//! a re-cluster job has stored its trends, and a pool of workers that call
//! the provider under a rate limit and a circuit breaker and write each
//! answer back to its trend. Nothing here runs on the embedding, ingestion
//! or clustering paths: a job is done when its trends are stored, and a
//! provider that hangs only keeps this queue waiting.

pub mod guard;
pub mod prompt;
pub mod provider;

use crate::trends::jobs::now_ms;
use crate::trends::records::{self, LlmRecord, LlmStatus, TrendRecord};
use guard::{BreakerState, CircuitBreaker, RateLimiter, back_off};
use prompt::{PromptTemplate, parse_answer};
use provider::{Prompt, Provider, ProviderError};
use pulse_store::VectorStore;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

/// How the summary path behaves; `pulse serve`'s `--llm-*` flags.
#[derive(Debug, Clone)]
pub struct SummaryConfig {
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Trends that may wait; beyond it a trend's summary fails as "queue full".
    pub queue_capacity: usize,
    /// Calls per summary for transient failures (429, 5xx, network, timeout).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Cap on the answer's length.
    pub max_tokens: u32,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    /// Consecutive failed calls that open the breaker.
    pub breaker_failures: u32,
    pub breaker_cool_down: Duration,
    /// A trend keeps its summary while at least this share of its members
    /// (Jaccard) and of its keywords stay the same.
    pub member_overlap: f64,
    pub keyword_overlap: f64,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            queue_capacity: 1024,
            max_attempts: 4,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            max_tokens: 400,
            requests_per_minute: 60,
            tokens_per_minute: 100_000,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(30),
            member_overlap: 0.8,
            keyword_overlap: 0.6,
        }
    }
}

/// One trend to summarise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub brand: String,
    pub model: String,
    pub dimension: usize,
    pub run_id: String,
    pub trend_id: i64,
    /// Asked for by `RegenerateSummary`: written even if a newer run exists.
    pub forced: bool,
}

struct Shared {
    provider: Arc<dyn Provider>,
    template: PromptTemplate,
    store: Arc<dyn VectorStore>,
    config: SummaryConfig,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    waiting: AtomicUsize,
}

/// The summary queue and its workers.
#[derive(Clone)]
pub struct Summariser {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Task>,
}

/// The result of one summary, before it is stored.
struct Outcome {
    record: LlmRecord,
    metric: &'static str,
}

impl Summariser {
    /// Starts `config.concurrency` workers on the current runtime; they
    /// stop, abandoning calls in flight, when `stop` turns true. Returns the
    /// workers' handles beside the queue.
    pub fn start(
        provider: Arc<dyn Provider>,
        template: PromptTemplate,
        store: Arc<dyn VectorStore>,
        config: SummaryConfig,
        stop: watch::Receiver<bool>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let (queue, tasks) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            limiter: RateLimiter::new(config.requests_per_minute, config.tokens_per_minute),
            breaker: CircuitBreaker::new(config.breaker_failures, config.breaker_cool_down),
            provider,
            template,
            store,
            config,
            waiting: AtomicUsize::new(0),
        });
        shared.queue_gauge().set(0.0);
        shared.breaker_gauge().set(BreakerState::Closed.gauge());
        let tasks = Arc::new(Mutex::new(tasks));
        let mut workers = Vec::new();
        for _ in 0..shared.config.concurrency.max(1) {
            let (shared, tasks, mut stop) = (shared.clone(), tasks.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let task = tokio::select! {
                        task = async { tasks.lock().await.recv().await } => task,
                        _ = stop.wait_for(|stop| *stop) => None,
                    };
                    let Some(task) = task else {
                        return;
                    };
                    shared.waiting.fetch_sub(1, Ordering::Relaxed);
                    shared.show_queue_length();
                    tokio::select! {
                        () = shared.run(task) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
            }));
        }
        (Self { shared, queue }, workers)
    }

    /// A pending record naming who will write the summary.
    pub fn pending(&self) -> LlmRecord {
        self.shared.record(LlmStatus::Pending, String::new())
    }

    pub fn config(&self) -> &SummaryConfig {
        &self.shared.config
    }

    /// Queues a trend whose stored summary is pending. A full queue fails
    /// the summary at once (stored, with the reason) instead of blocking
    /// the job that found the trend.
    pub async fn enqueue(&self, task: Task) {
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(task) {
            Ok(()) => self.shared.show_queue_length(),
            Err(err) => {
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                let task = match err {
                    mpsc::error::TrySendError::Full(task)
                    | mpsc::error::TrySendError::Closed(task) => task,
                };
                let record = self.shared.record(
                    LlmStatus::Failed,
                    format!(
                        "the summary queue was full ({} trends waiting)",
                        self.shared.config.queue_capacity
                    ),
                );
                metrics::counter!("pulse_llm_summaries_total", "status" => "queue_full")
                    .increment(1);
                self.shared.store_record(&task, &record).await;
            }
        }
    }
}

impl Shared {
    // Labelled by provider and model so that several servers in one process
    // (tests) do not share one gauge.
    fn queue_gauge(&self) -> metrics::Gauge {
        metrics::gauge!("pulse_llm_queue_length", "provider" => self.provider.name(), "model" => self.provider.model().to_string())
    }

    fn breaker_gauge(&self) -> metrics::Gauge {
        metrics::gauge!("pulse_llm_breaker_state", "provider" => self.provider.name(), "model" => self.provider.model().to_string())
    }

    fn show_queue_length(&self) {
        self.queue_gauge()
            .set(self.waiting.load(Ordering::Relaxed) as f64);
    }

    /// A record of this provider, model and prompt, stamped now.
    fn record(&self, status: LlmStatus, reason: String) -> LlmRecord {
        LlmRecord {
            provider: self.provider.name().to_string(),
            model: self.provider.model().to_string(),
            prompt_version: self.template.version.clone(),
            reason,
            ..LlmRecord::with_status(status, "", now_ms())
        }
    }

    async fn run(&self, task: Task) {
        match self.superseded(&task).await {
            Ok(None) => {}
            Ok(Some(latest)) => {
                let record = self.record(
                    LlmStatus::Failed,
                    format!("run {latest} replaced this run before its summary was written"),
                );
                metrics::counter!("pulse_llm_summaries_total", "status" => "superseded")
                    .increment(1);
                self.store_record(&task, &record).await;
                return;
            }
            Err(err) => {
                tracing::warn!(brand = %task.brand, trend = task.trend_id, error = %err, "cannot check the trend's run; summarising it anyway");
            }
        }
        let trend = match records::trend(
            &*self.store,
            &task.model,
            task.dimension,
            &task.brand,
            task.trend_id,
            Some(&task.run_id),
        )
        .await
        {
            Ok(Some(trend)) => trend,
            Ok(None) => {
                tracing::warn!(brand = %task.brand, run = %task.run_id, trend = task.trend_id, "the trend to summarise is gone");
                return;
            }
            Err(err) => {
                tracing::warn!(brand = %task.brand, trend = task.trend_id, error = %err, "cannot read the trend to summarise");
                return;
            }
        };
        let outcome = self.summarise(&trend).await;
        metrics::counter!("pulse_llm_summaries_total", "status" => outcome.metric).increment(1);
        self.store_record(&task, &outcome.record).await;
    }

    /// The brand's latest run when it is not this task's (and the task was
    /// not forced): a newer run has its own summaries to write.
    async fn superseded(&self, task: &Task) -> Result<Option<String>, pulse_store::StoreError> {
        if task.forced {
            return Ok(None);
        }
        let latest =
            records::latest_run(&*self.store, &task.model, task.dimension, &task.brand).await?;
        Ok(latest
            .map(|run| run.run_id)
            .filter(|latest| *latest != task.run_id))
    }

    async fn store_record(&self, task: &Task, record: &LlmRecord) {
        if let Err(err) = records::set_llm(
            &*self.store,
            &task.model,
            &task.run_id,
            task.trend_id,
            record,
        )
        .await
        {
            tracing::warn!(brand = %task.brand, run = %task.run_id, trend = task.trend_id, error = %err, "cannot store the trend's summary");
        }
    }

    /// Asks the provider until it answers well, a failure is final, or the
    /// attempts run out.
    async fn summarise(&self, trend: &TrendRecord) -> Outcome {
        let (system, user) = self.template.render(trend);
        let prompt = Prompt {
            system,
            user,
            max_tokens: self.config.max_tokens,
        };
        // About four characters a token, as providers' tokenisers average on
        // English; settled against the reported usage after each call.
        let estimate = u32::try_from((prompt.system.len() + prompt.user.len()) / 4)
            .unwrap_or(u32::MAX)
            .saturating_add(prompt.max_tokens);
        let mut record = self.record(LlmStatus::Failed, String::new());
        let mut transient_failures = 0;
        let mut malformed = 0;
        loop {
            let permit = self.breaker.permit().await;
            self.limiter.acquire(estimate).await;
            record.attempts += 1;
            let started = Instant::now();
            let result = self.provider.complete(&prompt).await;
            metrics::histogram!("pulse_llm_request_seconds")
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(completion) => {
                    self.breaker.succeeded(permit);
                    self.breaker_gauge().set(self.breaker.state().gauge());
                    self.limiter.settle(
                        estimate,
                        completion.tokens_in.saturating_add(completion.tokens_out),
                    );
                    metrics::counter!("pulse_llm_tokens_total", "direction" => "in")
                        .increment(u64::from(completion.tokens_in));
                    metrics::counter!("pulse_llm_tokens_total", "direction" => "out")
                        .increment(u64::from(completion.tokens_out));
                    record.tokens_in += completion.tokens_in;
                    record.tokens_out += completion.tokens_out;
                    match parse_answer(&completion.text) {
                        Ok(answer) => {
                            metrics::counter!("pulse_llm_requests_total", "outcome" => "ok")
                                .increment(1);
                            record.status = LlmStatus::Done;
                            record.title = answer.title;
                            record.summary = answer.summary;
                            record.sentiment = answer.sentiment;
                            record.suggested_action = answer.suggested_action;
                            record.raw_response.clear();
                            record.reason.clear();
                            record.updated_ms = now_ms();
                            return Outcome {
                                record,
                                metric: "done",
                            };
                        }
                        Err(why) => {
                            metrics::counter!("pulse_llm_requests_total", "outcome" => "malformed")
                                .increment(1);
                            malformed += 1;
                            // One more try: models do fix a stray answer.
                            if malformed >= 2 {
                                record.reason = format!("malformed answer: {why}");
                                record.raw_response = completion.text;
                                record.updated_ms = now_ms();
                                return Outcome {
                                    record,
                                    metric: "failed",
                                };
                            }
                        }
                    }
                }
                Err(err) => {
                    metrics::counter!("pulse_llm_requests_total", "outcome" => err.kind())
                        .increment(1);
                    if err.is_transient() {
                        if self.breaker.failed(permit) {
                            tracing::warn!(provider = self.provider.name(), cool_down = ?self.config.breaker_cool_down, error = %err, "the LLM provider keeps failing: summaries paused");
                        }
                    } else {
                        // The provider answered, and the request is what it
                        // refused: the provider itself is up.
                        self.breaker.succeeded(permit);
                    }
                    self.breaker_gauge().set(self.breaker.state().gauge());
                    transient_failures += u32::from(err.is_transient());
                    if !err.is_transient() || transient_failures >= self.config.max_attempts {
                        return self.failed(record, &err, transient_failures);
                    }
                    let wait = back_off(
                        transient_failures,
                        self.config.retry_base,
                        self.config.retry_max,
                        err.retry_after(),
                    );
                    tracing::debug!(error = %err, ?wait, "retrying the LLM call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn failed(&self, mut record: LlmRecord, err: &ProviderError, attempts: u32) -> Outcome {
        record.reason = if err.is_transient() {
            format!("{err} (gave up after {attempts} attempts)")
        } else {
            err.to_string()
        };
        record.updated_ms = now_ms();
        Outcome {
            record,
            metric: "failed",
        }
    }
}

/// Jaccard similarity of two sets; two empty sets are the same.
pub fn jaccard<T: Eq + std::hash::Hash>(a: &HashSet<T>, b: &HashSet<T>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Whether a trend changed so little since the previous run (shares of
/// members and of keywords kept) that its summary still stands.
pub fn unchanged(member_overlap: f64, keyword_overlap: f64, config: &SummaryConfig) -> bool {
    member_overlap >= config.member_overlap && keyword_overlap >= config.keyword_overlap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_and_the_change_rule() {
        let a: HashSet<u32> = [1, 2, 3, 4].into();
        let b: HashSet<u32> = [2, 3, 4, 5].into();
        assert!((jaccard(&a, &b) - 0.6).abs() < 1e-12);
        assert_eq!(jaccard(&HashSet::<u32>::new(), &HashSet::new()), 1.0);
        let config = SummaryConfig::default();
        assert!(unchanged(0.9, 0.7, &config));
        assert!(!unchanged(0.7, 0.9, &config));
        assert!(!unchanged(0.9, 0.5, &config));
    }
}
