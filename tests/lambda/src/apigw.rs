//! API Gateway HTTP API events (payload format 2.0), built the way API
//! Gateway builds them, and the v2 responses `lambda_http` returns, decoded.
//!
//! It exists because the `webhook`, `admin` and `chat` functions are reached
//! only through API Gateway: a test must hand them the same JSON API
//! Gateway would (lower-cased headers, `rawQueryString`, cookies split out,
//! non-text bodies base64-encoded) and read their answers the way API
//! Gateway does. `events/webhook.json` is a sample of the shape.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

/// The default `Host` header and `requestContext.domainName`.
pub const DEFAULT_HOST: &str = "api-id.execute-api.us-east-1.amazonaws.com";

/// One HTTP request as API Gateway (HTTP API, payload 2.0) passes it to a
/// Lambda function.
#[derive(Debug, Clone)]
pub struct HttpApiRequest {
    method: String,
    raw_path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    base64: Option<bool>,
    route_key: String,
    path_parameters: BTreeMap<String, String>,
    source_ip: String,
}

impl HttpApiRequest {
    /// A request for `raw_path` (no query: add it with [`Self::query`]).
    pub fn new(method: &str, raw_path: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            raw_path: raw_path.to_owned(),
            query: Vec::new(),
            headers: vec![
                ("host".to_owned(), DEFAULT_HOST.to_owned()),
                (
                    "user-agent".to_owned(),
                    "crmbridge-lambda-harness".to_owned(),
                ),
            ],
            body: None,
            base64: None,
            route_key: "$default".to_owned(),
            path_parameters: BTreeMap::new(),
            source_ip: "203.0.113.10".to_owned(),
        }
    }

    pub fn get(raw_path: &str) -> Self {
        Self::new("GET", raw_path)
    }

    pub fn post(raw_path: &str) -> Self {
        Self::new("POST", raw_path)
    }

    /// Appends one query parameter (kept in order; repeated names allowed).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Appends several query parameters.
    pub fn query_pairs<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        self.query.extend(
            pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Sets a header, replacing any earlier value (API Gateway lower-cases
    /// names).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Adds one more value of a header (API Gateway joins repeated headers
    /// with commas).
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// The `host` header and `requestContext.domainName` (the functions
    /// derive URLs they print from it).
    pub fn host(self, host: &str) -> Self {
        self.header("host", host)
    }

    /// A body with its content type.
    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        let mut request = self.header("content-type", content_type);
        request.body = Some(body.into());
        request
    }

    /// A JSON body (`application/json`).
    pub fn json(self, value: &Value) -> Self {
        let text = value.to_string();
        self.body("application/json", text)
    }

    /// A form body (`application/x-www-form-urlencoded`).
    pub fn form<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let text = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .finish();
        self.body("application/x-www-form-urlencoded", text)
    }

    /// Forces `isBase64Encoded` (by default: base64 unless the content type
    /// is text — `text/*`, JSON, XML, JavaScript — and the body is UTF-8,
    /// which is what API Gateway does for HTTP APIs).
    pub fn base64(mut self, encode: bool) -> Self {
        self.base64 = Some(encode);
        self
    }

    /// The matched route (`routeKey`) and its `pathParameters`, e.g.
    /// `("ANY /hooks/{connection}/{token}", [("connection", "con_1"), …])`.
    /// Default: `$default`, no parameters.
    pub fn route(mut self, route_key: &str, parameters: &[(&str, &str)]) -> Self {
        self.route_key = route_key.to_owned();
        self.path_parameters = parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }

    /// The caller's address (`requestContext.http.sourceIp`).
    pub fn source_ip(mut self, ip: &str) -> Self {
        self.source_ip = ip.to_owned();
        self
    }

    fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(name, _)| name == "content-type")
            .map(|(_, value)| value.as_str())
    }

    fn header_value(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The event JSON the Lambda function receives.
    pub fn to_event(&self) -> Value {
        let raw_query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let host = self
            .header_value("host")
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let user_agent = self.header_value("user-agent").unwrap_or_default();

        let mut headers = Map::new();
        let mut cookies = Vec::new();
        for (name, _) in &self.headers {
            if name == "cookie" {
                continue;
            }
            if !headers.contains_key(name)
                && let Some(value) = self.header_value(name)
            {
                headers.insert(name.clone(), Value::String(value));
            }
        }
        for (name, value) in &self.headers {
            if name == "cookie" {
                cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            }
        }
        if let Some(body) = &self.body {
            headers
                .entry("content-length")
                .or_insert_with(|| Value::String(body.len().to_string()));
        }

        let mut query_parameters = Map::new();
        for (name, value) in &self.query {
            let joined = match query_parameters.get(name).and_then(Value::as_str) {
                Some(earlier) => format!("{earlier},{value}"),
                None => value.clone(),
            };
            query_parameters.insert(name.clone(), Value::String(joined));
        }

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let domain_prefix = host.split('.').next().unwrap_or_default().to_owned();
        let mut event = json!({
            "version": "2.0",
            "routeKey": self.route_key,
            "rawPath": self.raw_path,
            "rawQueryString": raw_query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "api-id",
                "domainName": host,
                "domainPrefix": domain_prefix,
                "http": {
                    "method": self.method,
                    "path": self.raw_path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": self.source_ip,
                    "userAgent": user_agent,
                },
                "requestId": crate::uuid_v4(),
                "routeKey": self.route_key,
                "stage": "$default",
                "time": chrono_like_clf(now.as_secs()),
                "timeEpoch": u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
            },
            "isBase64Encoded": false,
        });
        if !cookies.is_empty() {
            event["cookies"] = json!(cookies);
        }
        if !query_parameters.is_empty() {
            event["queryStringParameters"] = Value::Object(query_parameters);
        }
        if !self.path_parameters.is_empty() {
            event["pathParameters"] = json!(self.path_parameters);
        }
        if let Some(body) = &self.body {
            let text = std::str::from_utf8(body).ok();
            let encode = self
                .base64
                .unwrap_or_else(|| text.is_none() || !is_text(self.content_type()));
            match text {
                Some(text) if !encode => event["body"] = Value::String(text.to_owned()),
                _ => {
                    event["body"] = Value::String(BASE64.encode(body));
                    event["isBase64Encoded"] = Value::Bool(true);
                }
            }
        }
        event
    }
}

/// Content types API Gateway passes through as text.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/xml"
        || mime.ends_with("+xml")
        || mime == "application/javascript"
}

/// `requestContext.time`, e.g. `12/Mar/2020:19:03:58 +0000`.
fn chrono_like_clf(epoch_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = i64::try_from(epoch_secs / 86_400).unwrap_or_default();
    let secs = epoch_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = usize::try_from(month - 1)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{day:02}/{month_name}/{year}:{:02}:{:02}:{:02} +0000",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// The v2 response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("not an API Gateway v2 response (no numeric statusCode): {0}")]
    NotAResponse(Value),
    #[error("the body is marked base64 but is not: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("the body is not JSON: {source}; body: {body}")]
    Json {
        #[source]
        source: serde_json::Error,
        body: String,
    },
}

/// A function's answer to an [`HttpApiRequest`], as API Gateway reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpApiResponse {
    pub status: u16,
    /// Lower-cased names; multi-value headers joined with commas.
    pub headers: BTreeMap<String, String>,
    pub cookies: Vec<String>,
    /// The decoded body (base64 undone).
    pub body: Vec<u8>,
}

impl HttpApiResponse {
    /// Reads `{statusCode, headers, multiValueHeaders, cookies, body,
    /// isBase64Encoded}`.
    pub fn from_value(value: &Value) -> Result<Self, ResponseError> {
        let status = value["statusCode"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| ResponseError::NotAResponse(value.clone()))?;
        let mut headers = BTreeMap::new();
        if let Some(map) = value["headers"].as_object() {
            for (name, v) in map {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                headers.insert(name.to_ascii_lowercase(), text);
            }
        }
        if let Some(map) = value["multiValueHeaders"].as_object() {
            for (name, values) in map {
                let joined = values
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                headers.entry(name.to_ascii_lowercase()).or_insert(joined);
            }
        }
        let cookies = value["cookies"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let raw = value["body"].as_str().unwrap_or_default();
        let body = if value["isBase64Encoded"].as_bool().unwrap_or(false) {
            BASE64.decode(raw)?
        } else {
            raw.as_bytes().to_vec()
        };
        Ok(Self {
            status,
            headers,
            cookies,
            body,
        })
    }

    /// A header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`null` for an empty body).
    pub fn json(&self) -> Result<Value, ResponseError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|source| ResponseError::Json {
            source,
            body: self.text(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_json_post_matches_the_sample_shape() {
        let event = HttpApiRequest::post("/hooks/con_1/tok")
            .route(
                "ANY /hooks/{connection}/{token}",
                &[("connection", "con_1"), ("token", "tok")],
            )
            .query("requestId", "r 1")
            .json(&json!({"a": 1}))
            .to_event();
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["rawPath"], "/hooks/con_1/tok");
        assert_eq!(event["rawQueryString"], "requestId=r+1");
        assert_eq!(event["queryStringParameters"]["requestId"], "r 1");
        assert_eq!(event["requestContext"]["http"]["method"], "POST");
        assert_eq!(event["requestContext"]["stage"], "$default");
        assert_eq!(event["headers"]["content-type"], "application/json");
        assert_eq!(event["pathParameters"]["connection"], "con_1");
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["body"], "{\"a\":1}");
    }

    #[test]
    fn form_and_binary_bodies_are_base64() {
        let event = HttpApiRequest::post("/x")
            .form(&[("phone", "+7 916"), ("tag", "Лид")])
            .to_event();
        assert_eq!(event["isBase64Encoded"], true);
        let decoded = BASE64.decode(event["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "phone=%2B7+916&tag=%D0%9B%D0%B8%D0%B4"
        );
        let binary = HttpApiRequest::post("/x")
            .body("text/plain", vec![0xff, 0xfe])
            .to_event();
        assert_eq!(binary["isBase64Encoded"], true);
    }

    #[test]
    fn headers_are_lowercased_joined_and_cookies_split() {
        let event = HttpApiRequest::get("/v1/runs")
            .header("X-Thing", "a")
            .append_header("x-thing", "b")
            .header("User-Agent", "one")
            .header("user-agent", "two")
            .header("Cookie", "a=1; b=2")
            .to_event();
        assert_eq!(event["headers"]["x-thing"], "a,b");
        assert_eq!(event["headers"]["user-agent"], "two");
        assert_eq!(event["requestContext"]["http"]["userAgent"], "two");
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        assert!(event.get("body").is_none());
    }

    #[test]
    fn the_request_time_is_in_common_log_format() {
        assert_eq!(chrono_like_clf(1_583_348_638), "04/Mar/2020:19:03:58 +0000");
        assert_eq!(chrono_like_clf(0), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn responses_decode_text_and_base64_bodies() {
        let text = HttpApiResponse::from_value(&json!({
            "statusCode": 202,
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"x-a": ["1", "2"]},
            "body": "{\"status\":\"accepted\"}",
            "isBase64Encoded": false
        }))
        .unwrap();
        assert_eq!(text.status, 202);
        assert_eq!(text.header("content-type"), Some("application/json"));
        assert_eq!(text.header("X-A"), Some("1,2"));
        assert_eq!(text.json().unwrap()["status"], "accepted");
        let encoded = HttpApiResponse::from_value(&json!({
            "statusCode": 200, "body": BASE64.encode("hi"), "isBase64Encoded": true
        }))
        .unwrap();
        assert_eq!(encoded.text(), "hi");
        assert!(HttpApiResponse::from_value(&json!({"runs": []})).is_err());
    }
}
