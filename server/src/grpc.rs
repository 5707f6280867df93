//! The gRPC services: `pulse.v1.EmbeddingService` and `pulse.v1.ModelService`.

use crate::auth::Quota;
use crate::batcher::{JobError, Priority, SubmitError};
use crate::models::{EmbedError, EmbedOptions, EmbedOutcome, ItemFailure, Registry, ServedModel};
use futures::stream::{FuturesOrdered, StreamExt};
use pulse_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Request limits the APIs enforce before any work is queued.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_inputs: usize,
    pub interactive_inputs: usize,
    pub stream_window: usize,
}

#[derive(Clone)]
pub struct EmbeddingApi {
    pub registry: Arc<Registry>,
    pub limits: Limits,
}

impl EmbeddingApi {
    /// Runs one request; `streamed` requests are bulk work.
    async fn embed_one(
        &self,
        request: pb::EmbedRequest,
        deadline: Option<Instant>,
        streamed: bool,
        quota: Option<Arc<Quota>>,
    ) -> Result<pb::EmbedResponse, Status> {
        let started = Instant::now();
        let outcome = self.run(&request, deadline, streamed, quota).await;
        let label = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        metrics::counter!("pulse_requests_total", "api" => "grpc", "outcome" => label).increment(1);
        let (model, outcome) = outcome?;
        metrics::histogram!("pulse_request_seconds", "api" => "grpc")
            .record(started.elapsed().as_secs_f64());
        Ok(to_response(request, model, outcome, started.elapsed()))
    }

    async fn run(
        &self,
        request: &pb::EmbedRequest,
        deadline: Option<Instant>,
        streamed: bool,
        quota: Option<Arc<Quota>>,
    ) -> Result<(String, EmbedOutcome), Status> {
        pulse_proto::validate::item_count(request.inputs.len(), self.limits.max_inputs, "inputs")?;
        let model = self
            .registry
            .find(&request.model)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let priority = if streamed || request.inputs.len() > self.limits.interactive_inputs {
            Priority::Bulk
        } else {
            Priority::Interactive
        };
        let prompt = model
            .prompt(request.prompt_name.as_deref(), request.prompt.as_deref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let options = EmbedOptions {
            normalize: request.normalize,
            truncate: request.truncate.unwrap_or(true),
            priority,
            deadline,
            quota,
            prompt: Some(prompt),
        };
        let texts: Vec<String> = request.inputs.iter().map(|i| i.text.clone()).collect();
        let outcome = model.embed(texts, &options).await.map_err(status_of)?;
        Ok((model.name.clone(), outcome))
    }
}

/// The status a whole-request failure maps to.
pub fn status_of(err: EmbedError) -> Status {
    match err {
        EmbedError::Queue(e @ SubmitError::QueueFull { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        EmbedError::Queue(e @ SubmitError::TooLarge { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        EmbedError::Queue(e @ SubmitError::Stopped) => Status::unavailable(e.to_string()),
        EmbedError::Job(JobError::DeadlineExceeded) | EmbedError::DeadlineExceeded => {
            Status::deadline_exceeded("the deadline passed before the request was served")
        }
        EmbedError::Job(e @ JobError::Inference(_)) => Status::internal(e.to_string()),
        EmbedError::WorkerGone => Status::unavailable(err.to_string()),
        EmbedError::RateLimited(limited) => limited.status(),
    }
}

fn to_response(
    request: pb::EmbedRequest,
    model: String,
    outcome: EmbedOutcome,
    total: Duration,
) -> pb::EmbedResponse {
    let results = request
        .inputs
        .into_iter()
        .zip(outcome.items)
        .map(|(input, item)| pb::EmbedResult {
            id: input.id,
            outcome: Some(match item {
                Ok(e) => pb::embed_result::Outcome::Embedding(pb::Embedding {
                    values: e.vector,
                    tokens: e.tokens as u32,
                    truncated: e.truncated,
                    cached: e.cached,
                }),
                Err(e) => pb::embed_result::Outcome::Error(pb::ItemError {
                    reason: match e.reason {
                        ItemFailure::TooLong => pb::item_error::Reason::TooLong,
                        ItemFailure::InvalidText => pb::item_error::Reason::InvalidText,
                    } as i32,
                    message: e.message,
                }),
            }),
        })
        .collect();
    pb::EmbedResponse {
        results,
        model,
        usage: Some(pb::Usage {
            tokens: outcome.tokens as u64,
            computed_tokens: outcome.computed_tokens as u64,
            cache_hits: outcome.cache_hits as u32,
        }),
        timings: Some(pb::Timings {
            queue_us: outcome.queue_time.as_micros() as u64,
            inference_us: outcome.inference_time.as_micros() as u64,
            total_us: total.as_micros() as u64,
        }),
        request_id: request.request_id,
    }
}

/// The client's deadline from the `grpc-timeout` header.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = header.split_at(header.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

type EmbedStreamOut =
    Pin<Box<dyn futures::Stream<Item = Result<pb::EmbedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::embedding_service_server::EmbeddingService for EmbeddingApi {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = deadline_of(&request);
        let quota = Quota::of(&request);
        let response = self
            .embed_one(request.into_inner(), deadline, false, quota)
            .await?;
        Ok(Response::new(response))
    }

    type EmbedStreamStream = EmbedStreamOut;

    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let deadline = deadline_of(&request);
        let quota = Quota::of(&request);
        let mut incoming = request.into_inner();
        let window = self.limits.stream_window;
        let (sender, receiver) = mpsc::channel(window);
        let api = self.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    // Read more only while the window has room: that is the
                    // back-pressure a fast client feels.
                    next = incoming.next(), if reading && in_flight.len() < window => match next {
                        Some(Ok(request)) => {
                            let (api, quota) = (api.clone(), quota.clone());
                            in_flight.push_back(async move { api.embed_one(request, deadline, true, quota).await });
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%status, "embed stream ended by the client");
                            reading = false;
                        }
                        None => reading = false,
                    },
                    Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                        if sender.send(response).await.is_err() {
                            // The client went away; dropping the futures
                            // drops their queued work.
                            return;
                        }
                    }
                    else => return,
                }
                if !reading && in_flight.is_empty() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[derive(Clone)]
pub struct ModelApi {
    pub registry: Arc<Registry>,
}

pub fn model_info(model: &ServedModel) -> pb::ModelInfo {
    let info = model.info();
    pb::ModelInfo {
        name: model.name.clone(),
        source: model.source.clone(),
        is_default: model.is_default,
        architecture: info.architecture.to_string(),
        dimension: info.dimension as u32,
        pooling: info.pooling.to_string(),
        normalize: info.normalize,
        max_seq_length: info.max_seq_length as u32,
        device: info.device.clone(),
        dtype: info.dtype.clone(),
        loaded_from: info.dir.display().to_string(),
        revision: info.revision.clone().unwrap_or_default(),
        parameters: info.parameters as u64,
        kernels: info.kernels.to_string(),
        prompts: info
            .prompts
            .iter()
            .map(|(name, prompt)| (name.clone(), prompt.clone()))
            .collect(),
        default_prompt_name: info.default_prompt_name.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::model_service_server::ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.registry.all().iter().map(|m| model_info(m)).collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let name = request.into_inner().name;
        let model = self
            .registry
            .find(&name)
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(model_info(&model)))
    }
}
