//! An OpenAI-compatible chat-completions server on a loopback port whose
//! answers a test scripts: well, slowly, 429 with Retry-After, 500,
//! malformed, or never.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Good,
    Slow(Duration),
    RateLimited {
        retry_after_secs: u64,
    },
    ServerError,
    /// A completion whose content is not the JSON object asked for.
    Malformed,
    Hang,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    next: VecDeque<Answer>,
    otherwise: Option<Answer>,
    calls: Vec<Call>,
}

#[derive(Clone)]
pub struct FakeLlm {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl FakeLlm {
    /// Starts the fake; it answers `otherwise` once the script is used up.
    pub async fn start(otherwise: Answer) -> Self {
        let script = Arc::new(Mutex::new(Script {
            otherwise: Some(otherwise),
            ..Script::default()
        }));
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, script }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.script.lock().next.extend(answers.iter().copied());
    }

    pub fn otherwise(&self, answer: Answer) {
        self.script.lock().otherwise = Some(answer);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.script.lock().calls.clone()
    }
}

/// The first keyword of the prompt, so a good answer can show it was read.
fn first_keyword(body: &Value) -> String {
    body.pointer("/messages/1/content")
        .and_then(Value::as_str)
        .and_then(|user| user.lines().find_map(|l| l.strip_prefix("Keywords: ")))
        .and_then(|keywords| keywords.split(", ").next())
        .unwrap_or("?")
        .to_string()
}

fn completion(content: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }))
    .into_response()
}

fn good(body: &Value) -> Response {
    let answer = json!({
        "title": format!("About {}", first_keyword(body)),
        "summary": "People talk about this a lot. It matters.",
        "sentiment": "negative",
        "suggested_action": "Answer the complaints.",
    });
    completion(&answer.to_string())
}

async fn complete(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = {
        let mut script = script.lock();
        script.calls.push(Call {
            at: Instant::now(),
            body: body.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        });
        let otherwise = script.otherwise.unwrap_or(Answer::Good);
        script.next.pop_front().unwrap_or(otherwise)
    };
    match answer {
        Answer::Good => good(&body),
        Answer::Slow(wait) => {
            tokio::time::sleep(wait).await;
            good(&body)
        }
        Answer::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
            "slow down",
        )
            .into_response(),
        Answer::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Answer::Malformed => completion("Sure! Here is a summary: it is about batteries."),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            good(&body)
        }
    }
}
