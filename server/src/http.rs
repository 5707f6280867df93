//! HTTP beside gRPC: OpenAI-compatible `POST /v1/embeddings`, `GET
//! /v1/models` and `GET /v1/models/{id}`, `GET /health`, `GET /ready` and
//! Prometheus `GET /metrics`.

use crate::auth::{ApiKeys, Quota, RateLimited};
use crate::batcher::Priority;
use crate::grpc::{Limits, status_of};
use crate::models::{EmbedError, EmbedOptions, Input, Registry, ServedModel};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    pub ready: Arc<AtomicBool>,
    pub metrics: PrometheusHandle,
    /// `None`: no `--api-key-file`, every caller is let in.
    pub api_keys: Option<Arc<ApiKeys>>,
}

pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        // Model names hold slashes (`org/name`): the rest of the path.
        .route("/v1/models/{*id}", get(get_model))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// OpenAI's shape for a path pulse does not serve, so clients show the
/// message instead of failing to parse an empty body.
async fn unknown_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        format!("no route for {method} {}", uri.path()),
    )
}

/// A served model as OpenAI's model object.
fn model_object(model: &ServedModel) -> Value {
    let created = model
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    json!({
        "id": model.name,
        "object": "model",
        "created": created,
        "owned_by": "pulse",
    })
}

async fn list_models(State(state): State<HttpState>) -> Response {
    let data: Vec<Value> = state
        .registry
        .all()
        .iter()
        .map(|model| model_object(model))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    // An empty id would name the default model in the registry; OpenAI has
    // no such model.
    let found = match id.as_str() {
        "" => None,
        id => state.registry.find(id).ok(),
    };
    match found {
        Some(model) => Json(model_object(&model)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            format!("the model `{id}` does not exist"),
        ),
    }
}

/// The API routes need a known key when keys are configured, within its
/// requests per second; health, readiness and metrics stay open for probes
/// and scrapers. The key's quota goes on with the request.
async fn require_key(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    if let Some(keys) = &state.api_keys {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let grant = match keys.authorise(header("authorization"), header("x-api-key")) {
            Ok(grant) => grant,
            Err(why) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    None,
                    why.to_string(),
                );
            }
        };
        if let Some(quota) = grant.quota {
            if let Err(limited) = quota.take_request() {
                return rate_limited(&limited);
            }
            request.extensions_mut().insert(quota);
        }
    }
    next.run(request).await
}

/// 429 with `Retry-After`, in the OpenAI error shape.
fn rate_limited(limited: &RateLimited) -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        None,
        limited.to_string(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, limited.retry_after_seconds().into());
    response
}

async fn ready(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
    }
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    let mut gpus = Vec::new();
    for model in state.registry.all() {
        metrics::gauge!("pulse_queue_tokens", "model" => model.name.clone())
            .set(model.queued_tokens() as f64);
        let device = model.device();
        if !device.is_cpu()
            && !gpus
                .iter()
                .any(|d: &pulse_models::Device| d.same_device(device))
        {
            gpus.push(device.clone());
        }
    }
    for gpu in &gpus {
        if let Some(memory) = pulse_models::gpu_memory(gpu) {
            let name = pulse_models::device_name(gpu);
            metrics::gauge!("pulse_gpu_memory_used_bytes", "device" => name.clone())
                .set(memory.used_bytes as f64);
            metrics::gauge!("pulse_gpu_memory_total_bytes", "device" => name)
                .set(memory.total_bytes as f64);
        }
    }
    state.metrics.render()
}

/// `input` as OpenAI takes it: a string, strings, one list of token ids,
/// or lists of token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum InputField {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

impl InputField {
    fn into_inputs(self) -> Vec<Input> {
        match self {
            InputField::One(text) => vec![Input::Text(text)],
            InputField::Many(texts) => texts.into_iter().map(Input::Text).collect(),
            // An empty list is no input, not one empty token list.
            InputField::Tokens(ids) if ids.is_empty() => Vec::new(),
            InputField::Tokens(ids) => vec![Input::TokenIds(ids)],
            InputField::ManyTokens(lists) => lists.into_iter().map(Input::TokenIds).collect(),
        }
    }
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Value,
    #[serde(default)]
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// OpenAI's end-user id: accepted and not used.
    #[serde(default, rename = "user")]
    _user: Option<String>,
    /// pulse's own: a prompt of the model's by name, or a literal prompt,
    /// as on gRPC.
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
}

/// An error in OpenAI's shape.
fn error(status: StatusCode, kind: &str, param: Option<&str>, message: String) -> Response {
    metrics::counter!("pulse_requests_total", "api" => "http", "outcome" => kind.to_string())
        .increment(1);
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": null}});
    (status, Json(body)).into_response()
}

fn http_status(code: tonic::Code) -> StatusCode {
    match code {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn embeddings(
    State(state): State<HttpState>,
    quota: Option<Extension<Arc<Quota>>>,
    body: Result<Json<EmbeddingsRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            // 413 for a body over --max-message-bytes, 400 or 415 otherwise.
            return error(
                rejection.status(),
                "invalid_request_error",
                None,
                rejection.body_text(),
            );
        }
    };
    let inputs = match serde_json::from_value::<InputField>(request.input) {
        Ok(input) => input.into_inputs(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("input"),
                "`input` must be a string, an array of strings, an array of token ids or an array of arrays of token ids"
                    .into(),
            );
        }
    };
    if inputs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("input"),
            "`input` is empty".into(),
        );
    }
    if inputs.len() > state.limits.max_inputs {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("input"),
            format!(
                "`input` has {} items; the limit is {} (--max-inputs)",
                inputs.len(),
                state.limits.max_inputs
            ),
        );
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("encoding_format"),
                format!("`encoding_format` must be float or base64, not `{other}`"),
            );
        }
    };
    let model = match state.registry.find(&request.model) {
        Ok(model) => model,
        Err(unknown) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                unknown.to_string(),
            );
        }
    };
    let prompt = match model.prompt(request.prompt_name.as_deref(), request.prompt.as_deref()) {
        Ok(prompt) => prompt,
        Err(err) => {
            let param = if request.prompt_name.is_some() {
                "prompt_name"
            } else {
                "prompt"
            };
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(param),
                err.to_string(),
            );
        }
    };
    if let Some(dimensions) = request.dimensions
        && dimensions != model.info().dimension
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("dimensions"),
            format!(
                "model `{}` makes {}-dimensional vectors and cannot shorten them",
                model.name,
                model.info().dimension
            ),
        );
    }
    let options = EmbedOptions {
        normalize: None,
        truncate: true,
        priority: if inputs.len() > state.limits.interactive_inputs {
            Priority::Bulk
        } else {
            Priority::Interactive
        },
        deadline: None,
        quota: quota.map(|Extension(quota)| quota),
        prompt: Some(prompt),
    };
    let outcome = match model.embed_inputs(inputs, &options).await {
        Ok(outcome) => outcome,
        Err(EmbedError::RateLimited(limited)) => return rate_limited(&limited),
        Err(err) => {
            let status = status_of(err);
            return error(
                http_status(status.code()),
                "server_error",
                None,
                status.message().to_string(),
            );
        }
    };
    let mut data = Vec::with_capacity(outcome.items.len());
    for (index, item) in outcome.items.into_iter().enumerate() {
        let embedded = match item {
            Ok(embedded) => embedded,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("input"),
                    format!("input {index}: {}", e.message),
                );
            }
        };
        let embedding = if base64 {
            let bytes: Vec<u8> = embedded
                .vector
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            EmbeddingValue::Float(embedded.vector)
        };
        data.push(EmbeddingData {
            object: "embedding",
            index,
            embedding,
        });
    }
    metrics::counter!("pulse_requests_total", "api" => "http", "outcome" => "ok").increment(1);
    Json(EmbeddingsResponse {
        object: "list",
        data,
        model: model.name.clone(),
        usage: Usage {
            prompt_tokens: outcome.tokens,
            total_tokens: outcome.tokens,
        },
    })
    .into_response()
}

// Typed rather than `serde_json::Value`, so vectors are written as f32
// (shortest form) instead of being widened to f64.
#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}
