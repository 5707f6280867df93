//! API keys: who may call, which brands a key may touch, and how fast.
//!
//! `--api-key-file` holds one key a line, optionally followed by a
//! comma-separated list of brands the key is limited to and by its own rate
//! limits (`KEY brand1,brand2 requests_per_second=20 tokens_per_second=5000`;
//! `#` starts a comment); `--key-requests-per-second` and
//! `--key-tokens-per-second` are the limits of keys that name none. Keys are
//! kept only as SHA-256 digests and compared in constant time, all of them
//! every time, so neither timing nor a log line gives one away. The gRPC
//! interceptor and the HTTP layer take the key from `authorization: Bearer
//! KEY` (or `x-api-key: KEY`), spend one request of its [`Quota`], and leave
//! the caller's [`Access`] and quota in the request's extensions: the
//! services check brands against the one and charge the tokens they embed
//! to the other.

use crate::rate::TokenBucket;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error("the API key file {0} holds no key")]
    Empty(String),
}

/// What a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    AnyBrand,
    Brands(Arc<BTreeSet<String>>),
}

impl Access {
    /// The caller's access: what the interceptor found, or any brand when
    /// the server runs without keys.
    pub fn of<T>(request: &tonic::Request<T>) -> Access {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .unwrap_or(Access::AnyBrand)
    }

    /// `PERMISSION_DENIED` unless the key may use `brand`; a key limited to
    /// brands must name one (an empty brand would reach all of them).
    pub fn allow(&self, brand: &str) -> Result<(), Status> {
        match self {
            Access::AnyBrand => Ok(()),
            Access::Brands(_) if brand.is_empty() => Err(Status::permission_denied(
                "this API key is limited to some brands: name one",
            )),
            Access::Brands(brands) if brands.contains(brand) => Ok(()),
            Access::Brands(_) => Err(Status::permission_denied(format!(
                "this API key may not use brand `{brand}`"
            ))),
        }
    }
}

/// Rate limits of one key, per second; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimits {
    pub requests_per_second: Option<f64>,
    pub tokens_per_second: Option<f64>,
}

/// A key's limit was reached; `retry_after` is when it allows this much again.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "this API key's limit of {limit} {what} per second is used up; retry in {:.2} s",
    retry_after.as_secs_f64()
)]
pub struct RateLimited {
    pub what: &'static str,
    pub limit: f64,
    pub retry_after: Duration,
}

impl RateLimited {
    /// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail and a
    /// `retry-after` header in whole seconds, for clients that read only that.
    pub fn status(&self) -> Status {
        let mut status = Status::with_error_details(
            tonic::Code::ResourceExhausted,
            self.to_string(),
            ErrorDetails::with_retry_info(Some(self.retry_after)),
        );
        status
            .metadata_mut()
            .insert("retry-after", self.retry_after_seconds().into());
        status
    }

    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil() as u64
    }
}

/// What one key may still spend: requests and embedded tokens per second,
/// each bucket holding a second's worth (a request bigger than that goes
/// through on a full bucket and leaves it in debt).
#[derive(Debug)]
pub struct Quota {
    requests: Option<Mutex<TokenBucket>>,
    tokens: Option<Mutex<TokenBucket>>,
}

impl Quota {
    /// `None` when the limits limit nothing.
    fn new(limits: KeyLimits) -> Option<Quota> {
        let now = Instant::now();
        let bucket = |rate: Option<f64>| {
            rate.map(|rate| Mutex::new(TokenBucket::new(rate, rate.max(1.0), now)))
        };
        let quota = Quota {
            requests: bucket(limits.requests_per_second),
            tokens: bucket(limits.tokens_per_second),
        };
        (quota.requests.is_some() || quota.tokens.is_some()).then_some(quota)
    }

    /// The caller's quota, as the interceptor left it; `None`: unlimited.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Arc<Quota>> {
        request.extensions().get::<Arc<Quota>>().cloned()
    }

    pub fn take_request(&self) -> Result<(), RateLimited> {
        take(&self.requests, "requests", 1.0)
    }

    pub fn take_tokens(&self, tokens: usize) -> Result<(), RateLimited> {
        take(&self.tokens, "tokens", tokens as f64)
    }
}

fn take(
    bucket: &Option<Mutex<TokenBucket>>,
    what: &'static str,
    amount: f64,
) -> Result<(), RateLimited> {
    let Some(bucket) = bucket else {
        return Ok(());
    };
    let mut bucket = bucket.lock();
    bucket
        .try_take(amount, Instant::now())
        .map_err(|retry_after| RateLimited {
            what,
            limit: bucket.per_second(),
            retry_after,
        })
}

/// What a presented key grants: its brands and its quota.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access: Access,
    pub quota: Option<Arc<Quota>>,
}

struct Key {
    digest: [u8; 32],
    grant: Grant,
}

/// The keys of `--api-key-file`.
pub struct ApiKeys {
    keys: Vec<Key>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Parses a key file; `defaults` are the limits of keys naming none.
    pub fn parse(text: &str, path: &str, defaults: KeyLimits) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why| KeyFileError::Line {
                path: path.to_string(),
                line: number + 1,
                why,
            };
            let (key, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let mut limits = defaults;
            let mut list = Vec::new();
            for field in rest.split_whitespace() {
                let Some((name, value)) = field.split_once('=') else {
                    list.push(field);
                    continue;
                };
                let rate = match value.parse::<f64>() {
                    Ok(rate) if rate.is_finite() && rate >= 0.0 => (rate > 0.0).then_some(rate),
                    _ => return Err(bad("a limit must be a number ≥ 0 (0: none)")),
                };
                match name {
                    "requests_per_second" => limits.requests_per_second = rate,
                    "tokens_per_second" => limits.tokens_per_second = rate,
                    _ => {
                        return Err(bad(
                            "the limits are requests_per_second=N and tokens_per_second=N",
                        ));
                    }
                }
            }
            let list = list.join(" ");
            let access = if list.trim().is_empty() {
                Access::AnyBrand
            } else {
                let brands: BTreeSet<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_string)
                    .collect();
                if brands.is_empty() {
                    return Err(bad("the brand list is empty"));
                }
                if brands.iter().any(|b| b.contains(char::is_whitespace)) {
                    return Err(bad("expected `KEY` or `KEY brand1,brand2`"));
                }
                Access::Brands(Arc::new(brands))
            };
            keys.push(Key {
                digest: digest(key),
                grant: Grant {
                    access,
                    quota: Quota::new(limits).map(Arc::new),
                },
            });
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty(path.to_string()));
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path, defaults: KeyLimits) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown, defaults)
    }

    /// What `presented` grants, or `None` for an unknown key. Every key is
    /// compared, so the time taken does not depend on which one matched.
    pub fn check(&self, presented: &str) -> Option<Grant> {
        let wanted = digest(presented);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&wanted)) {
                found = Some(key.grant.clone());
            }
        }
        found
    }

    /// What a request's `authorization: Bearer KEY` or `x-api-key: KEY`
    /// header value grants, as the interceptor and the HTTP layer both need.
    pub fn authorise(
        &self,
        bearer: Option<&str>,
        x_api_key: Option<&str>,
    ) -> Result<Grant, &'static str> {
        let presented = bearer
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(x_api_key)
            .ok_or("an API key is required (authorization: Bearer KEY)")?;
        self.check(presented.trim()).ok_or("unknown API key")
    }
}

/// The gRPC interceptor: `UNAUTHENTICATED` without a known key,
/// `RESOURCE_EXHAUSTED` (with retry info) when the key's requests per second
/// are used up, else the request goes on carrying the key's [`Access`] and
/// [`Quota`]. Without keys, everything passes.
pub fn interceptor(
    keys: Option<Arc<ApiKeys>>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut request: tonic::Request<()>| {
        let Some(keys) = &keys else {
            return Ok(request);
        };
        let header = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        let grant = keys
            .authorise(header("authorization"), header("x-api-key"))
            .map_err(Status::unauthenticated)?;
        if let Some(quota) = grant.quota {
            quota.take_request().map_err(|limited| limited.status())?;
            request.extensions_mut().insert(quota);
        }
        request.extensions_mut().insert(grant.access);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# pulse keys\nsk-admin\n\nsk-acme acme, acme-eu  # the Acme team\n";

    #[test]
    fn keys_parse_with_and_without_brands() {
        let keys = ApiKeys::parse(FILE, "keys", KeyLimits::default()).unwrap();
        assert_eq!(
            keys.check("sk-admin").map(|g| g.access),
            Some(Access::AnyBrand)
        );
        let acme = keys.check("sk-acme").unwrap().access;
        assert!(acme.allow("acme").is_ok() && acme.allow("acme-eu").is_ok());
        let denied = acme.allow("globex").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("globex"));
        assert_eq!(
            acme.allow("").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(keys.check("sk-acm").is_none());
        assert!(keys.check("").is_none());
    }

    #[test]
    fn bad_key_files_say_where() {
        let err = ApiKeys::parse("k a b\n", "f", KeyLimits::default())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "f:1: expected `KEY` or `KEY brand1,brand2`");
        let err = ApiKeys::parse("ok\nk ,\n", "f", KeyLimits::default())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "f:2: the brand list is empty");
        assert!(matches!(
            ApiKeys::parse("# nothing\n", "f", KeyLimits::default()),
            Err(KeyFileError::Empty(_))
        ));
        assert!(matches!(
            ApiKeys::load(Path::new("/nonexistent/keys"), KeyLimits::default()),
            Err(KeyFileError::Read { .. })
        ));
    }

    #[test]
    fn headers_are_read_as_bearer_or_x_api_key() {
        let keys = ApiKeys::parse(FILE, "keys", KeyLimits::default()).unwrap();
        let access = |grant: Result<Grant, &'static str>| grant.map(|g| g.access);
        assert_eq!(
            access(keys.authorise(Some("Bearer sk-admin"), None)),
            Ok(Access::AnyBrand)
        );
        assert_eq!(
            access(keys.authorise(None, Some("sk-admin"))),
            Ok(Access::AnyBrand)
        );
        assert!(keys.authorise(Some("Basic sk-admin"), None).is_err());
        assert_eq!(
            access(keys.authorise(None, None)),
            Err("an API key is required (authorization: Bearer KEY)")
        );
        assert_eq!(
            access(keys.authorise(Some("Bearer nope"), None)),
            Err("unknown API key")
        );
    }

    #[test]
    fn limits_come_from_the_line_or_the_defaults() {
        let defaults = KeyLimits {
            requests_per_second: Some(5.0),
            tokens_per_second: None,
        };
        let keys = ApiKeys::parse(
            "plain\nacme acme, acme-eu requests_per_second=2 tokens_per_second=100\nfree requests_per_second=0\n",
            "keys",
            defaults,
        )
        .unwrap();
        let plain = keys.check("plain").unwrap().quota.unwrap();
        for _ in 0..5 {
            plain.take_request().unwrap();
        }
        let limited = plain.take_request().unwrap_err();
        assert_eq!(limited.what, "requests");
        assert!(
            limited.retry_after > Duration::ZERO
                && limited.retry_after <= Duration::from_millis(200)
        );
        assert!(
            plain.take_tokens(1_000_000).is_ok(),
            "no token limit by default"
        );

        let acme = keys.check("acme").unwrap();
        assert!(acme.access.allow("acme-eu").is_ok());
        let quota = acme.quota.unwrap();
        quota.take_tokens(80).unwrap();
        let limited = quota.take_tokens(80).unwrap_err();
        assert_eq!((limited.what, limited.limit), ("tokens", 100.0));
        let status = limited.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(limited.retry_after)
        );
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");

        assert!(
            keys.check("free").unwrap().quota.is_none(),
            "0 lifts the default"
        );
        for (line, why) in [
            ("k requests_per_second=fast\n", "a limit must be a number"),
            ("k requests_per_second=-1\n", "a limit must be a number"),
            ("k burst=3\n", "the limits are"),
        ] {
            let err = ApiKeys::parse(line, "f", defaults)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
