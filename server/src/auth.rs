//! API keys: who may call, and which brands a key may touch.
//!
//! `--api-key-file` holds one key a line, optionally followed by a
//! comma-separated list of brands the key is limited to (`#` starts a
//! comment). Keys are kept only as SHA-256 digests and compared in constant
//! time, all of them every time, so neither timing nor a log line gives one
//! away. The gRPC interceptor and the HTTP layer take the key from
//! `authorization: Bearer KEY` (or `x-api-key: KEY`) and leave the caller's
//! [`Access`] in the request's extensions for the services' brand checks.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::Status;

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

struct Key {
    digest: [u8; 32],
    access: Access,
}

/// The keys of `--api-key-file`.
pub struct ApiKeys {
    keys: Vec<Key>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn parse(text: &str, path: &str) -> Result<Self, KeyFileError> {
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
            let (key, list) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
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
                access,
            });
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty(path.to_string()));
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// The access of `presented`, or `None` for an unknown key. Every key
    /// is compared, so the time taken does not depend on which one matched.
    pub fn check(&self, presented: &str) -> Option<Access> {
        let wanted = digest(presented);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&wanted)) {
                found = Some(key.access.clone());
            }
        }
        found
    }

    /// The access of a request's `authorization: Bearer KEY` or
    /// `x-api-key: KEY` header value, as the interceptor and the HTTP layer
    /// both need it.
    pub fn authorise(
        &self,
        bearer: Option<&str>,
        x_api_key: Option<&str>,
    ) -> Result<Access, &'static str> {
        let presented = bearer
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(x_api_key)
            .ok_or("an API key is required (authorization: Bearer KEY)")?;
        self.check(presented.trim()).ok_or("unknown API key")
    }
}

/// The gRPC interceptor: `UNAUTHENTICATED` without a known key, else the
/// request goes on carrying the key's [`Access`]. Without keys, everything
/// passes.
pub fn interceptor(
    keys: Option<Arc<ApiKeys>>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut request: tonic::Request<()>| {
        let Some(keys) = &keys else {
            return Ok(request);
        };
        let header = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        let access = keys
            .authorise(header("authorization"), header("x-api-key"))
            .map_err(Status::unauthenticated)?;
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# pulse keys\nsk-admin\n\nsk-acme acme, acme-eu  # the Acme team\n";

    #[test]
    fn keys_parse_with_and_without_brands() {
        let keys = ApiKeys::parse(FILE, "keys").unwrap();
        assert_eq!(keys.check("sk-admin"), Some(Access::AnyBrand));
        let acme = keys.check("sk-acme").unwrap();
        assert!(acme.allow("acme").is_ok() && acme.allow("acme-eu").is_ok());
        let denied = acme.allow("globex").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("globex"));
        assert_eq!(
            acme.allow("").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(keys.check("sk-acm"), None);
        assert_eq!(keys.check(""), None);
    }

    #[test]
    fn bad_key_files_say_where() {
        let err = ApiKeys::parse("k a b\n", "f").err().unwrap().to_string();
        assert_eq!(err, "f:1: expected `KEY` or `KEY brand1,brand2`");
        let err = ApiKeys::parse("ok\nk ,\n", "f").err().unwrap().to_string();
        assert_eq!(err, "f:2: the brand list is empty");
        assert!(matches!(
            ApiKeys::parse("# nothing\n", "f"),
            Err(KeyFileError::Empty(_))
        ));
        assert!(matches!(
            ApiKeys::load(Path::new("/nonexistent/keys")),
            Err(KeyFileError::Read { .. })
        ));
    }

    #[test]
    fn headers_are_read_as_bearer_or_x_api_key() {
        let keys = ApiKeys::parse(FILE, "keys").unwrap();
        assert_eq!(
            keys.authorise(Some("Bearer sk-admin"), None),
            Ok(Access::AnyBrand)
        );
        assert_eq!(keys.authorise(None, Some("sk-admin")), Ok(Access::AnyBrand));
        assert!(keys.authorise(Some("Basic sk-admin"), None).is_err());
        assert_eq!(
            keys.authorise(None, None),
            Err("an API key is required (authorization: Bearer KEY)")
        );
        assert_eq!(
            keys.authorise(Some("Bearer nope"), None),
            Err("unknown API key")
        );
    }
}
