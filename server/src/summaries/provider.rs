//! LLM providers behind one trait: an OpenAI-compatible chat-completions
//! client and an Anthropic messages client. A provider makes one HTTP call;
//! retries, rate limits and the circuit breaker belong to the caller.

use serde_json::{Value, json};
use std::time::Duration;

/// What to ask: a system instruction, the user's message and a cap on the
/// answer's length.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub max_tokens: u32,
}

/// A provider's answer: the text and the tokens it counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tokens_in: u32,
    pub tokens_out: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider asked us to slow down (429), optionally saying for how long.
    #[error("rate limited by the provider (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// A 5xx answer: the provider is failing, possibly for a while.
    #[error("the provider failed with HTTP {status}: {body}")]
    Server {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// Connection refused or reset, DNS, or no answer within the timeout.
    #[error("cannot reach the provider: {0}")]
    Network(String),
    /// A 4xx other than 429: retrying the same request cannot help.
    #[error("the provider refused the request with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// A 2xx answer without the fields the API promises.
    #[error("the provider's answer is not a completion: {0}")]
    Protocol(String),
}

impl ProviderError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Network(_)
        )
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::Network(_) => "network_error",
            Self::Rejected { .. } => "rejected",
            Self::Protocol(_) => "protocol_error",
        }
    }
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// `openai` or `anthropic`, for the stored record and the metrics.
    fn name(&self) -> &'static str;
    /// The model the provider is asked to use.
    fn model(&self) -> &str;
    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ProviderError>;
}

/// Where a provider lives and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// Up to the API's version segment, e.g. `https://host/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

// The key must never reach a log line, so Debug leaves it out.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| ProviderError::Network(format!("cannot build the HTTP client: {e}")))
}

fn url(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Longest part of an error body kept in the error (bodies can be pages).
const BODY_IN_ERROR: usize = 300;

fn clipped(body: &str) -> String {
    match body.char_indices().nth(BODY_IN_ERROR) {
        Some((at, _)) => format!("{}…", &body[..at]),
        None => body.to_string(),
    }
}

/// Sends a JSON request and sorts the outcome into the error kinds above.
async fn post(request: reqwest::RequestBuilder, body: &Value) -> Result<Value, ProviderError> {
    let response = request
        .json(body)
        .send()
        .await
        .map_err(|e| ProviderError::Network(e.without_url().to_string()))?;
    let status = response.status();
    let wait = retry_after(response.headers());
    let text = response
        .text()
        .await
        .map_err(|e| ProviderError::Network(e.without_url().to_string()))?;
    if status.as_u16() == 429 {
        return Err(ProviderError::RateLimited { retry_after: wait });
    }
    if status.is_server_error() {
        return Err(ProviderError::Server {
            status: status.as_u16(),
            body: clipped(&text),
            retry_after: wait,
        });
    }
    if !status.is_success() {
        return Err(ProviderError::Rejected {
            status: status.as_u16(),
            body: clipped(&text),
        });
    }
    serde_json::from_str(&text)
        .map_err(|e| ProviderError::Protocol(format!("{e}: {}", clipped(&text))))
}

fn tokens(value: &Value, key: &str) -> u32 {
    value
        .get(key)
        .and_then(Value::as_u64)
        .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
}

/// Chat completions as OpenAI, vLLM, llama.cpp's server, Ollama and most
/// gateways speak it.
pub struct OpenAiCompatible {
    endpoint: Endpoint,
    http: reqwest::Client,
}

impl OpenAiCompatible {
    pub fn new(endpoint: Endpoint) -> Result<Self, ProviderError> {
        Ok(Self {
            http: client(endpoint.timeout)?,
            endpoint,
        })
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiCompatible {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.endpoint.model
    }

    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ProviderError> {
        let body = json!({
            "model": self.endpoint.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": prompt.max_tokens,
            "temperature": 0.2,
            "response_format": {"type": "json_object"},
        });
        let mut request = self
            .http
            .post(url(&self.endpoint.base_url, "chat/completions"));
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let answer = post(request, &body).await?;
        let text = answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Protocol("no choices[0].message.content".into()))?;
        let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
        Ok(Completion {
            text: text.to_string(),
            tokens_in: tokens(&usage, "prompt_tokens"),
            tokens_out: tokens(&usage, "completion_tokens"),
        })
    }
}

/// Anthropic's messages API.
pub struct Anthropic {
    endpoint: Endpoint,
    http: reqwest::Client,
}

const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Anthropic {
    pub fn new(endpoint: Endpoint) -> Result<Self, ProviderError> {
        Ok(Self {
            http: client(endpoint.timeout)?,
            endpoint,
        })
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.endpoint.model
    }

    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ProviderError> {
        let body = json!({
            "model": self.endpoint.model,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "max_tokens": prompt.max_tokens,
            "temperature": 0.2,
        });
        let mut request = self
            .http
            .post(url(&self.endpoint.base_url, "messages"))
            .header("anthropic-version", ANTHROPIC_VERSION);
        if let Some(key) = &self.endpoint.api_key {
            request = request.header("x-api-key", key);
        }
        let answer = post(request, &body).await?;
        let text: String = answer
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::Protocol("no content blocks".into()))?
            .iter()
            .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect();
        let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
        Ok(Completion {
            text,
            tokens_in: tokens(&usage, "input_tokens"),
            tokens_out: tokens(&usage, "output_tokens"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(soon);
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Tue, 01 Jan 2019 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn endpoint_debug_hides_the_key() {
        let endpoint = Endpoint {
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("sk-secret") && shown.contains("<set>"));
    }

    use axum::Json;
    use axum::http::{HeaderMap as Headers, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;

    /// A loopback server with one route per way a provider can answer.
    async fn fake_provider() -> String {
        let app = axum::Router::new()
            .route(
                "/anthropic/messages",
                post(|headers: Headers, Json(body): Json<Value>| async move {
                    assert_eq!(headers["x-api-key"], "sk-a");
                    assert_eq!(headers["anthropic-version"], ANTHROPIC_VERSION);
                    assert_eq!(body["system"], "be brief");
                    assert_eq!(body["messages"][0]["content"], "hello");
                    Json(json!({
                        "content": [
                            {"type": "text", "text": "{\"title\": "},
                            {"type": "text", "text": "\"t\"}"}
                        ],
                        "usage": {"input_tokens": 11, "output_tokens": 7}
                    }))
                }),
            )
            .route(
                "/openai/chat/completions",
                post(|headers: Headers, Json(body): Json<Value>| async move {
                    assert_eq!(headers["authorization"], "Bearer sk-o");
                    assert_eq!(body["response_format"]["type"], "json_object");
                    assert_eq!(body["messages"][0]["role"], "system");
                    assert_eq!(body["max_tokens"], 50);
                    Json(json!({
                        "choices": [{"message": {"content": "{}"}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2}
                    }))
                }),
            )
            .route(
                "/limited/chat/completions",
                post(|| async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "3")],
                        "slow down",
                    )
                }),
            )
            .route(
                "/failing/chat/completions",
                post(|| async { (StatusCode::BAD_GATEWAY, "upstream down").into_response() }),
            )
            .route(
                "/refusing/chat/completions",
                post(|| async { (StatusCode::UNAUTHORIZED, "bad key").into_response() }),
            )
            .route(
                "/garbled/chat/completions",
                post(|| async { Json(json!({"choices": []})) }),
            )
            .route(
                "/slow/chat/completions",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn endpoint(base: &str, path: &str, key: &str) -> Endpoint {
        Endpoint {
            base_url: format!("{base}/{path}/"),
            model: "m".into(),
            api_key: Some(key.into()),
            timeout: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn both_apis_are_spoken_and_failures_are_sorted() {
        let base = fake_provider().await;
        let prompt = Prompt {
            system: "be brief".into(),
            user: "hello".into(),
            max_tokens: 50,
        };
        let anthropic = Anthropic::new(endpoint(&base, "anthropic", "sk-a")).unwrap();
        let answer = anthropic.complete(&prompt).await.unwrap();
        assert_eq!(answer.text, "{\"title\": \"t\"}");
        assert_eq!((answer.tokens_in, answer.tokens_out), (11, 7));
        let openai = OpenAiCompatible::new(endpoint(&base, "openai", "sk-o")).unwrap();
        let answer = openai.complete(&prompt).await.unwrap();
        assert_eq!(
            (answer.text.as_str(), answer.tokens_in, answer.tokens_out),
            ("{}", 5, 2)
        );

        let call = |path: &'static str| {
            let base = base.clone();
            let prompt = prompt.clone();
            async move {
                OpenAiCompatible::new(endpoint(&base, path, "k"))
                    .unwrap()
                    .complete(&prompt)
                    .await
                    .unwrap_err()
            }
        };
        let limited = call("limited").await;
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        let failing = call("failing").await;
        assert!(failing.is_transient() && failing.to_string().contains("HTTP 502"));
        let refusing = call("refusing").await;
        assert!(!refusing.is_transient() && refusing.to_string().contains("bad key"));
        let garbled = call("garbled").await;
        assert!(!garbled.is_transient() && garbled.kind() == "protocol_error");
        let slow = call("slow").await;
        assert!(
            slow.is_transient() && slow.kind() == "network_error",
            "{slow}"
        );
        let nobody = OpenAiCompatible::new(endpoint("http://127.0.0.1:1", "v1", "k"))
            .unwrap()
            .complete(&prompt)
            .await
            .unwrap_err();
        assert_eq!(nobody.kind(), "network_error");
    }

    #[test]
    fn long_bodies_are_clipped() {
        let body = "é".repeat(1000);
        let clipped = clipped(&body);
        assert_eq!(clipped.chars().count(), BODY_IN_ERROR + 1);
    }
}
