//! A fake HTTP receiver: what an `http.request` step calls. It stands for
//! any endpoint that follows the conventions in
//! `shared/connectors/src/vendors/http/API.md`:
//!
//! * any path; `GET`, `PUT`, `PATCH` and `DELETE` answer 200
//!   `{"ok":true,"path":…}` and change nothing;
//! * with [`FakeReceiver::require_authorization`], a request without
//!   exactly that `Authorization` value → 401 `{"error":"unauthorized"}`;
//! * with [`FakeReceiver::require_signature`], a request without a valid
//!   Standard Webhooks signature (`webhook-id`, `webhook-timestamp` within
//!   five minutes, `webhook-signature` `v1,<base64 HMAC-SHA256>`) → 401
//!   `{"error":"bad signature"}`;
//! * a `POST` creates one delivery: 201 `{"id":"rcv_<n>","received":<n>}`.
//!   A repeat of an `Idempotency-Key` already seen gets the first answer
//!   again and creates nothing (as Stripe and the IETF draft describe);
//! * `/redirect?to=<url>` answers 307 to `<url>`; `/status/<code>` answers
//!   that status with `{"error":"status <code>"}`;
//! * faults: `ServerError` → 503 `{"error":"unavailable"}`,
//!   `TooManyRequests` → 429 with `Retry-After: 1`.
//!
//! The log redacts `authorization`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// How far a signature's timestamp may be from now.
const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Default)]
struct Data {
    /// (idempotency key or none, body as received), in arrival order.
    deliveries: Vec<(Option<String>, Value)>,
    /// Idempotency key → the first answer's delivery id.
    keys: HashMap<String, String>,
    authorization: Option<String>,
    signing_key: Option<Vec<u8>>,
}

struct Inner {
    data: Mutex<Data>,
}

/// A running fake receiver. Dropping it stops the server.
pub struct FakeReceiver {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeReceiver")
            .field("addr", &self.server.addr)
            .finish()
    }
}

fn error(status: StatusCode, text: &str) -> Resp {
    Resp::json(status, &json!({"error": text}))
}

impl FakeReceiver {
    /// Starts a receiver that takes any request.
    pub async fn start() -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                data: Mutex::new(Data::default()),
            });
            inner_out = Some(inner.clone());
            Arc::new(Receiver(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeReceiver { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// From now on, requests must carry exactly this `Authorization`.
    pub fn require_authorization(&self, value: &str) {
        lock(&self.inner.data).authorization = Some(value.to_owned());
    }

    /// From now on, requests must be signed with this `whsec_…` secret.
    pub fn require_signature(&self, secret: &str) -> Result<(), FakeError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .map_err(|err| FakeError::Invalid(format!("signing secret: {err}")))?;
        lock(&self.inner.data).signing_key = Some(key);
        Ok(())
    }

    /// The bodies of the deliveries made (repeats of a key not counted).
    pub fn deliveries(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .deliveries
            .iter()
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// How many deliveries were made.
    pub fn delivery_count(&self) -> usize {
        lock(&self.inner.data).deliveries.len()
    }
}

struct Receiver(Arc<Inner>);

fn signature_ok(key: &[u8], req: &Req) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > TOLERANCE_SECS {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&req.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|entry| entry.strip_prefix("v1,") == Some(expected.as_str()))
}

impl Vendor for Receiver {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => {
                error(StatusCode::TOO_MANY_REQUESTS, "slow down").with_header("retry-after", "1")
            }
            Fault::RetryAfterText(text) => {
                error(StatusCode::TOO_MANY_REQUESTS, "slow down").with_header("retry-after", text)
            }
            _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        let mut data = lock(&self.0.data);
        if let Some(expected) = &data.authorization
            && req.header("authorization") != Some(expected.as_str())
        {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        if let Some(key) = &data.signing_key
            && !signature_ok(key, req)
        {
            return error(StatusCode::UNAUTHORIZED, "bad signature");
        }
        if req.path == "/redirect" {
            let to = req.query_param("to").unwrap_or_default();
            return Resp::new(StatusCode::TEMPORARY_REDIRECT).with_header("location", &to);
        }
        if let Some(code) = req.path.strip_prefix("/status/") {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &format!("status {}", status.as_u16()));
        }
        if req.method != Method::POST {
            return Resp::json(StatusCode::OK, &json!({"ok": true, "path": req.path}));
        }
        let key = req.header("idempotency-key").map(str::to_owned);
        if let Some(id) = key.as_ref().and_then(|k| data.keys.get(k)) {
            let number = id.trim_start_matches("rcv_").parse::<u64>().unwrap_or(0);
            return Resp::json(StatusCode::CREATED, &json!({"id": id, "received": number}));
        }
        let body = serde_json::from_slice(&req.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&req.body).into_owned()));
        data.deliveries.push((key.clone(), body));
        let number = data.deliveries.len();
        let id = format!("rcv_{number}");
        if let Some(key) = key {
            data.keys.insert(key, id.clone());
        }
        Resp::json(StatusCode::CREATED, &json!({"id": id, "received": number}))
    }
}
