//! The dynamic batcher: one worker thread per model owns the queue.
//!
//! Requests arrive as jobs of tokenized texts. The worker fills a batch up to
//! a token budget (padded tokens: longest × count) and a text cap, groups
//! texts of similar length, waits at most `max_wait` for company when the
//! queue is short, serves interactive jobs before bulk ones without starving
//! bulk, computes identical inputs in the queue once, and drops work whose
//! client went away or whose deadline passed before running it.

use pulse_models::{Embedder, TokenizedText};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What runs a batch: the model, or a stand-in in tests. Vectors come back
/// pooled but not normalised, one per text, in order.
pub trait Backend: Send + Sync + 'static {
    fn embed(&self, batch: &[TokenizedText]) -> Result<Vec<Vec<f32>>, String>;
}

impl Backend for Embedder {
    fn embed(&self, batch: &[TokenizedText]) -> Result<Vec<Vec<f32>>, String> {
        self.embed_tokenized_with(batch, false)
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Padded tokens (longest text × texts) one forward pass may hold.
    pub max_batch_tokens: usize,
    /// Texts one forward pass may hold.
    pub max_batch_texts: usize,
    /// How long a short queue waits for more work before running.
    pub max_wait: Duration,
    /// Tokens that may wait in the queue; more is refused at once.
    pub max_queue_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Small requests someone waits on.
    Interactive,
    /// Large batches and streams.
    Bulk,
}

/// Every `BULK_TURN`-th batch is led by bulk work when both kinds wait, so
/// a steady interactive load cannot starve bulk.
const BULK_TURN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({queued} tokens waiting, limit {limit}); retry later")]
    QueueFull { queued: usize, limit: usize },
    #[error("the request holds {tokens} tokens, more than the queue's limit of {limit}")]
    TooLarge { tokens: usize, limit: usize },
    #[error("the model worker has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("the deadline passed before the request was run")]
    DeadlineExceeded,
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Pooled vectors (before normalisation) in the order the texts were given.
#[derive(Debug)]
pub struct JobOutput {
    pub vectors: Vec<Arc<[f32]>>,
    /// From submission to the start of the last forward pass that served it.
    pub queue_time: Duration,
    /// Time in the forward passes that served it.
    pub inference_time: Duration,
    /// Tokens this job had computed (texts shared with others counted once).
    pub computed_tokens: usize,
}

pub type JobReply = oneshot::Receiver<Result<JobOutput, JobError>>;

struct Job {
    texts: Vec<TokenizedText>,
    priority: Priority,
    deadline: Option<Instant>,
    tokens: usize,
    submitted: Instant,
    reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// The handle requests use; cheap to clone. When the last handle is dropped
/// the worker finishes what is queued and stops.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    queued_tokens: Arc<AtomicUsize>,
    max_queue_tokens: usize,
    model: Arc<str>,
}

impl Batcher {
    /// Starts the worker thread for `backend`; `model` labels metrics.
    pub fn start(
        model: &str,
        backend: Arc<dyn Backend>,
        config: BatcherConfig,
    ) -> std::io::Result<(Batcher, std::thread::JoinHandle<()>)> {
        let (jobs, inbox) = mpsc::channel();
        let queued_tokens = Arc::new(AtomicUsize::new(0));
        let max_queue_tokens = config.max_queue_tokens;
        let model: Arc<str> = Arc::from(model);
        let worker = Worker {
            backend,
            config,
            inbox,
            queued_tokens: queued_tokens.clone(),
            model: model.clone(),
            jobs: HashMap::new(),
            units: HashMap::new(),
            by_key: HashMap::new(),
            queues: [VecDeque::new(), VecDeque::new()],
            next_job: 0,
            next_unit: 0,
            batches: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("pulse-batcher-{model}"))
            .spawn(move || worker.run())?;
        Ok((
            Batcher {
                jobs,
                max_queue_tokens,
                queued_tokens,
                model,
            },
            handle,
        ))
    }

    /// Queues `texts`; the reply comes when all are embedded. Refuses at once
    /// when the queue cannot take them.
    pub fn submit(
        &self,
        texts: Vec<TokenizedText>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<JobReply, SubmitError> {
        let tokens: usize = texts.iter().map(TokenizedText::len).sum();
        if tokens > self.max_queue_tokens {
            return Err(SubmitError::TooLarge {
                tokens,
                limit: self.max_queue_tokens,
            });
        }
        let reserved =
            self.queued_tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued + tokens <= self.max_queue_tokens).then_some(queued + tokens)
                });
        if let Err(queued) = reserved {
            metrics::counter!("pulse_queue_rejections_total", "model" => self.model.to_string())
                .increment(1);
            return Err(SubmitError::QueueFull {
                queued,
                limit: self.max_queue_tokens,
            });
        }
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            texts,
            priority,
            deadline,
            tokens,
            submitted: Instant::now(),
            reply,
        };
        if self.jobs.send(job).is_err() {
            self.queued_tokens.fetch_sub(tokens, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(receiver)
    }

    /// Tokens waiting in the queue now.
    pub fn queued_tokens(&self) -> usize {
        self.queued_tokens.load(Ordering::Acquire)
    }
}

type JobId = u64;
type UnitId = u64;

/// A job being served: where its vectors go and what it has cost.
struct JobState {
    reply: oneshot::Sender<Result<JobOutput, JobError>>,
    vectors: Vec<Option<Arc<[f32]>>>,
    remaining: usize,
    deadline: Option<Instant>,
    tokens: usize,
    submitted: Instant,
    queue_time: Duration,
    inference_time: Duration,
    computed_tokens: usize,
    /// The last batch that served this job, so a batch's time counts once.
    last_batch: Option<usize>,
}

/// One distinct input in the queue; every job text with the same token ids
/// waits on the same unit.
struct Unit {
    text: TokenizedText,
    key: u64,
    waiters: Vec<(JobId, usize)>,
    enqueued: Instant,
}

struct Worker {
    backend: Arc<dyn Backend>,
    config: BatcherConfig,
    inbox: mpsc::Receiver<Job>,
    queued_tokens: Arc<AtomicUsize>,
    model: Arc<str>,
    jobs: HashMap<JobId, JobState>,
    units: HashMap<UnitId, Unit>,
    by_key: HashMap<u64, UnitId>,
    /// Unit ids in arrival order: interactive, then bulk.
    queues: [VecDeque<UnitId>; 2],
    next_job: JobId,
    next_unit: UnitId,
    batches: usize,
}

fn queue_index(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Bulk => 1,
    }
}

fn content_key(text: &TokenizedText) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.ids.hash(&mut hasher);
    text.type_ids.hash(&mut hasher);
    hasher.finish()
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.units.is_empty() {
                // Nothing to do: sleep until work comes, or stop when every
                // handle is gone.
                match self.inbox.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.inbox.try_recv() {
                self.accept(job);
            }
            if let Some(wait) = self.wait_for_company() {
                match self.inbox.recv_timeout(wait) {
                    Ok(job) => {
                        self.accept(job);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    // The last handle went away: finish the queue without waiting.
                    Err(RecvTimeoutError::Disconnected) => {}
                }
            }
            self.drop_abandoned();
            let batch = self.next_batch();
            if !batch.is_empty() {
                self.run_batch(batch);
            }
            self.report_depth();
        }
    }

    fn accept(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let queue = queue_index(job.priority);
        let count = job.texts.len();
        for (index, text) in job.texts.into_iter().enumerate() {
            let key = content_key(&text);
            if let Some(unit) = self.by_key.get(&key).and_then(|u| self.units.get_mut(u)) {
                unit.waiters.push((id, index));
                continue;
            }
            let unit_id = self.next_unit;
            self.next_unit += 1;
            self.units.insert(
                unit_id,
                Unit {
                    text,
                    key,
                    waiters: vec![(id, index)],
                    enqueued: job.submitted,
                },
            );
            self.by_key.insert(key, unit_id);
            self.queues[queue].push_back(unit_id);
        }
        let state = JobState {
            reply: job.reply,
            vectors: vec![None; count],
            remaining: count,
            deadline: job.deadline,
            tokens: job.tokens,
            submitted: job.submitted,
            queue_time: Duration::ZERO,
            inference_time: Duration::ZERO,
            computed_tokens: 0,
            last_batch: None,
        };
        if count == 0 {
            self.finish(state);
        } else {
            self.jobs.insert(id, state);
        }
    }

    /// How long to wait for more work, or `None` to run now: run when a full
    /// batch is waiting or the oldest text has waited `max_wait`.
    fn wait_for_company(&self) -> Option<Duration> {
        let waiting_tokens: usize = self.units.values().map(|u| u.text.len()).sum();
        if waiting_tokens >= self.config.max_batch_tokens
            || self.units.len() >= self.config.max_batch_texts
        {
            return None;
        }
        let oldest = self.units.values().map(|u| u.enqueued).min()?;
        self.config
            .max_wait
            .checked_sub(oldest.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Drops jobs whose client went away or whose deadline passed, and the
    /// units nobody waits on any more.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let dead: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.reply.is_closed() || job.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        if dead.is_empty() {
            return;
        }
        let dead: HashSet<JobId> = dead.into_iter().collect();
        for id in &dead {
            if let Some(job) = self.jobs.remove(id) {
                self.queued_tokens.fetch_sub(job.tokens, Ordering::AcqRel);
                let expired = job.deadline.is_some_and(|d| d <= now);
                metrics::counter!("pulse_requests_dropped_total", "model" => self.model.to_string(),
                    "reason" => if expired { "deadline" } else { "cancelled" })
                .increment(1);
                if expired {
                    let _ = job.reply.send(Err(JobError::DeadlineExceeded));
                }
            }
        }
        let mut orphans = Vec::new();
        for (unit_id, unit) in self.units.iter_mut() {
            unit.waiters.retain(|(job, _)| !dead.contains(job));
            if unit.waiters.is_empty() {
                orphans.push(*unit_id);
            }
        }
        for unit_id in orphans {
            self.remove_unit(unit_id);
        }
        let units = &self.units;
        for queue in &mut self.queues {
            queue.retain(|u| units.contains_key(u));
        }
    }

    fn remove_unit(&mut self, unit_id: UnitId) -> Option<Unit> {
        let unit = self.units.remove(&unit_id)?;
        if self.by_key.get(&unit.key) == Some(&unit_id) {
            self.by_key.remove(&unit.key);
        }
        Some(unit)
    }

    /// Picks the next batch: led by the oldest text of the queue whose turn
    /// it is, filled with the waiting texts closest to it in length while the
    /// padded batch stays within budget.
    fn next_batch(&mut self) -> Vec<UnitId> {
        let lead_queue = match (self.queues[0].is_empty(), self.queues[1].is_empty()) {
            (true, true) => return Vec::new(),
            (false, true) => 0,
            (true, false) => 1,
            (false, false) => usize::from(self.batches % BULK_TURN == BULK_TURN - 1),
        };
        let Some(&anchor) = self.queues[lead_queue].front() else {
            return Vec::new();
        };
        let window = self.config.max_batch_texts.saturating_mul(4);
        let length = |u: &UnitId| self.units.get(u).map_or(0, |unit| unit.text.len());
        let anchor_len = length(&anchor);
        let mut candidates: Vec<UnitId> = self.queues[lead_queue]
            .iter()
            .skip(1)
            .chain(self.queues[1 - lead_queue].iter())
            .take(window)
            .copied()
            .collect();
        // Closest in length first; among equals, the older (lead queue first).
        candidates.sort_by_key(|u| length(u).abs_diff(anchor_len));
        let mut chosen = vec![anchor];
        let mut longest = anchor_len;
        for unit in candidates {
            if chosen.len() >= self.config.max_batch_texts {
                break;
            }
            let longest_with = longest.max(length(&unit));
            if longest_with * (chosen.len() + 1) > self.config.max_batch_tokens {
                continue;
            }
            longest = longest_with;
            chosen.push(unit);
        }
        let picked: HashSet<UnitId> = chosen.iter().copied().collect();
        for queue in &mut self.queues {
            queue.retain(|u| !picked.contains(u));
        }
        chosen
    }

    fn run_batch(&mut self, batch: Vec<UnitId>) {
        let units: Vec<Unit> = batch
            .into_iter()
            .filter_map(|id| self.remove_unit(id))
            .collect();
        let texts: Vec<TokenizedText> = units.iter().map(|u| u.text.clone()).collect();
        let batch_number = self.batches;
        self.batches += 1;
        let started = Instant::now();
        // A panic deep in the numeric stack fails this batch, not the worker:
        // the model keeps serving the requests after it.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.backend.embed(&texts)))
                .unwrap_or_else(|_| Err("the forward pass panicked".to_string()));
        let elapsed = started.elapsed();

        let model = self.model.to_string();
        let padded = texts.iter().map(TokenizedText::len).max().unwrap_or(0) * texts.len();
        let real: usize = texts.iter().map(TokenizedText::len).sum();
        metrics::histogram!("pulse_batch_texts", "model" => model.clone())
            .record(texts.len() as f64);
        metrics::histogram!("pulse_batch_tokens", "model" => model.clone()).record(real as f64);
        metrics::histogram!("pulse_batch_padded_tokens", "model" => model.clone())
            .record(padded as f64);
        metrics::histogram!("pulse_inference_seconds", "model" => model.clone())
            .record(elapsed.as_secs_f64());
        metrics::counter!("pulse_tokens_computed_total", "model" => model).increment(real as u64);

        match result {
            Ok(vectors) => {
                for (unit, vector) in units.into_iter().zip(vectors) {
                    let vector: Arc<[f32]> = Arc::from(vector);
                    let tokens = unit.text.len();
                    for (position, (job_id, index)) in unit.waiters.into_iter().enumerate() {
                        self.deliver(
                            job_id,
                            index,
                            vector.clone(),
                            started,
                            elapsed,
                            batch_number,
                            (position == 0).then_some(tokens),
                        );
                    }
                }
            }
            Err(message) => {
                tracing::error!(model = %self.model, error = %message, "forward pass failed");
                let failed: HashSet<JobId> = units
                    .iter()
                    .flat_map(|u| u.waiters.iter().map(|(job, _)| *job))
                    .collect();
                for job_id in failed {
                    if let Some(job) = self.jobs.remove(&job_id) {
                        self.queued_tokens.fetch_sub(job.tokens, Ordering::AcqRel);
                        let _ = job.reply.send(Err(JobError::Inference(message.clone())));
                    }
                }
                // Units of the failed jobs that were not in this batch wait
                // for nobody now.
                self.drop_abandoned();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        job_id: JobId,
        index: usize,
        vector: Arc<[f32]>,
        batch_started: Instant,
        batch_time: Duration,
        batch_number: usize,
        computed_tokens: Option<usize>,
    ) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.vectors[index] = Some(vector);
        job.remaining -= 1;
        job.queue_time = job
            .queue_time
            .max(batch_started.saturating_duration_since(job.submitted));
        job.computed_tokens += computed_tokens.unwrap_or(0);
        if job.last_batch != Some(batch_number) {
            job.last_batch = Some(batch_number);
            job.inference_time += batch_time;
        }
        if job.remaining == 0
            && let Some(job) = self.jobs.remove(&job_id)
        {
            self.finish(job);
        }
    }

    fn finish(&self, job: JobState) {
        self.queued_tokens.fetch_sub(job.tokens, Ordering::AcqRel);
        metrics::histogram!("pulse_queue_seconds", "model" => self.model.to_string())
            .record(job.queue_time.as_secs_f64());
        let output = JobOutput {
            vectors: job.vectors.into_iter().flatten().collect(),
            queue_time: job.queue_time,
            inference_time: job.inference_time,
            computed_tokens: job.computed_tokens,
        };
        // The client may be gone by now; then nobody needs the answer.
        let _ = job.reply.send(Ok(output));
    }

    fn report_depth(&self) {
        metrics::gauge!("pulse_queue_tokens", "model" => self.model.to_string())
            .set(self.queued_tokens.load(Ordering::Acquire) as f64);
        metrics::gauge!("pulse_queue_texts", "model" => self.model.to_string())
            .set(self.units.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender};

    /// Records every batch (the first id and length of each text) and holds
    /// the batch whose first text starts with [`BLOCK`] until released.
    struct Recorder {
        batches: Mutex<Vec<Vec<(u32, usize)>>>,
        started: Mutex<Sender<()>>,
        gate: Mutex<Receiver<()>>,
    }

    const BLOCK: u32 = 999;
    const PANIC: u32 = 666;

    impl Backend for Recorder {
        fn embed(&self, batch: &[TokenizedText]) -> Result<Vec<Vec<f32>>, String> {
            let seen: Vec<(u32, usize)> = batch.iter().map(|t| (t.ids[0], t.len())).collect();
            self.batches.lock().unwrap().push(seen);
            if batch[0].ids[0] == PANIC {
                panic!("a backend bug");
            }
            if batch[0].ids[0] == BLOCK {
                self.started.lock().unwrap().send(()).unwrap();
                self.gate.lock().unwrap().recv().unwrap();
            }
            Ok(batch
                .iter()
                .map(|t| vec![t.ids[0] as f32, t.len() as f32])
                .collect())
        }
    }

    struct Harness {
        batcher: Batcher,
        recorder: Arc<Recorder>,
        started: Receiver<()>,
        release: Sender<()>,
    }

    fn harness(config: BatcherConfig) -> Harness {
        let (started_tx, started) = mpsc::channel();
        let (release, gate) = mpsc::channel();
        let recorder = Arc::new(Recorder {
            batches: Mutex::new(Vec::new()),
            started: Mutex::new(started_tx),
            gate: Mutex::new(gate),
        });
        let (batcher, _worker) = Batcher::start("test", recorder.clone(), config).unwrap();
        Harness {
            batcher,
            recorder,
            started,
            release,
        }
    }

    fn config(max_batch_tokens: usize, max_batch_texts: usize, max_wait_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch_tokens,
            max_batch_texts,
            max_wait: Duration::from_millis(max_wait_ms),
            max_queue_tokens: 10_000,
        }
    }

    fn text(marker: u32, len: usize) -> TokenizedText {
        TokenizedText {
            ids: vec![marker; len],
            type_ids: vec![0; len],
            truncated: false,
        }
    }

    fn wait(reply: JobReply) -> Result<JobOutput, JobError> {
        reply.blocking_recv().expect("the worker answers")
    }

    /// Occupies the worker until `release` is sent.
    fn block(h: &Harness) -> JobReply {
        let reply = h
            .batcher
            .submit(vec![text(BLOCK, 1)], Priority::Interactive, None)
            .unwrap();
        h.started.recv().unwrap();
        reply
    }

    #[test]
    fn identical_texts_in_the_queue_are_computed_once() {
        let h = harness(config(1000, 8, 200));
        let a = h
            .batcher
            .submit(vec![text(7, 5), text(8, 5)], Priority::Bulk, None)
            .unwrap();
        let b = h
            .batcher
            .submit(vec![text(7, 5)], Priority::Interactive, None)
            .unwrap();
        let (a, b) = (wait(a).unwrap(), wait(b).unwrap());
        assert_eq!(&*a.vectors[0], &[7.0, 5.0]);
        assert_eq!(&*a.vectors[1], &[8.0, 5.0]);
        assert_eq!(&*b.vectors[0], &[7.0, 5.0]);
        let computed: usize = h
            .recorder
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum();
        assert_eq!(computed, 2);
        assert_eq!(a.computed_tokens + b.computed_tokens, 10);
    }

    #[test]
    fn batches_group_similar_lengths_within_the_token_budget() {
        let h = harness(config(40, 8, 0));
        let blocker = block(&h);
        let lengths = [2, 20, 3, 19, 2, 18];
        let job: Vec<TokenizedText> = lengths
            .iter()
            .enumerate()
            .map(|(i, &l)| text(i as u32, l))
            .collect();
        let reply = h.batcher.submit(job, Priority::Bulk, None).unwrap();
        h.release.send(()).unwrap();
        wait(blocker).unwrap();
        let output = wait(reply).unwrap();
        for (vector, &len) in output.vectors.iter().zip(&lengths) {
            assert_eq!(vector[1], len as f32, "each text gets its own vector back");
        }
        let batches = h.recorder.batches.lock().unwrap();
        let lengths: Vec<Vec<usize>> = batches[1..]
            .iter()
            .map(|b| {
                let mut l: Vec<usize> = b.iter().map(|(_, len)| *len).collect();
                l.sort();
                l
            })
            .collect();
        assert_eq!(lengths, vec![vec![2, 2, 3], vec![19, 20], vec![18]]);
    }

    #[test]
    fn interactive_work_goes_first_without_starving_bulk() {
        let h = harness(config(1000, 1, 0));
        let blocker = block(&h);
        let bulk_texts: Vec<TokenizedText> = (0..5).map(|i| text(100 + i, 3)).collect();
        let bulk = h.batcher.submit(bulk_texts, Priority::Bulk, None).unwrap();
        let interactive: Vec<JobReply> = (0..8)
            .map(|i| {
                h.batcher
                    .submit(vec![text(200 + i, 3)], Priority::Interactive, None)
                    .unwrap()
            })
            .collect();
        h.release.send(()).unwrap();
        wait(blocker).unwrap();
        wait(bulk).unwrap();
        for reply in interactive {
            wait(reply).unwrap();
        }
        let order: String = h.recorder.batches.lock().unwrap()[1..]
            .iter()
            .map(|b| if b[0].0 >= 200 { 'I' } else { 'B' })
            .collect();
        assert_eq!(order, "IIBIIIBIIIBBB");
    }

    #[test]
    fn abandoned_and_late_work_is_dropped_before_it_runs() {
        let h = harness(config(1000, 8, 0));
        let blocker = block(&h);
        let late = h
            .batcher
            .submit(
                vec![text(1, 4)],
                Priority::Interactive,
                Some(Instant::now() + Duration::from_millis(5)),
            )
            .unwrap();
        let abandoned = h
            .batcher
            .submit(vec![text(2, 4)], Priority::Interactive, None)
            .unwrap();
        drop(abandoned);
        let kept = h
            .batcher
            .submit(vec![text(3, 4)], Priority::Interactive, None)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        h.release.send(()).unwrap();
        wait(blocker).unwrap();
        assert_eq!(wait(late).unwrap_err(), JobError::DeadlineExceeded);
        assert_eq!(&*wait(kept).unwrap().vectors[0], &[3.0, 4.0]);
        let seen: Vec<u32> = h
            .recorder
            .batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(seen, vec![BLOCK, 3]);
        assert_eq!(h.batcher.queued_tokens(), 0);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let h = harness(BatcherConfig {
            max_queue_tokens: 10,
            ..config(1000, 8, 0)
        });
        let blocker = block(&h);
        let waiting = h
            .batcher
            .submit(vec![text(1, 8)], Priority::Bulk, None)
            .unwrap();
        assert_eq!(
            h.batcher
                .submit(vec![text(2, 2)], Priority::Bulk, None)
                .unwrap_err(),
            SubmitError::QueueFull {
                queued: 9,
                limit: 10
            }
        );
        assert_eq!(
            h.batcher
                .submit(vec![text(3, 11)], Priority::Bulk, None)
                .unwrap_err(),
            SubmitError::TooLarge {
                tokens: 11,
                limit: 10
            }
        );
        h.release.send(()).unwrap();
        wait(blocker).unwrap();
        wait(waiting).unwrap();
        assert_eq!(h.batcher.queued_tokens(), 0);
        assert!(
            h.batcher
                .submit(vec![text(4, 10)], Priority::Bulk, None)
                .is_ok()
        );
    }

    #[test]
    fn a_failing_batch_fails_its_jobs_and_the_worker_goes_on() {
        let h = harness(config(1000, 8, 0));
        let doomed = h
            .batcher
            .submit(vec![text(PANIC, 3)], Priority::Interactive, None)
            .unwrap();
        assert_eq!(
            wait(doomed).unwrap_err(),
            JobError::Inference("the forward pass panicked".into())
        );
        let fine = h
            .batcher
            .submit(vec![text(5, 3)], Priority::Interactive, None)
            .unwrap();
        assert_eq!(&*wait(fine).unwrap().vectors[0], &[5.0, 3.0]);
        assert_eq!(h.batcher.queued_tokens(), 0);
    }
}
