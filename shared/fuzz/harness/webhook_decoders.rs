//! The webhook decoders' harness, shared by the fuzz target
//! (`fuzz/fuzz_targets/webhook_decoders.rs`) and the stable test that
//! replays the corpus and crash inputs (`shared/connectors/tests/`, see
//! `fuzz/replay_webhook_decoders.rs.txt`), both through `#[path]`: one
//! function, so an input the fuzzer saved fails the normal test run the
//! same way. It needs only `crmbridge_connectors`, `serde_json` and
//! `form_urlencoded`, which the connectors crate already depends on.
//!
//! An input is a delivery written as text, so that seeds can be real
//! webhook bodies and stay readable:
//!
//! ```text
//! calltouch 0 GET                    app, settings variant, method
//! callerphone=79161234567&callId=555 query string (form-urlencoded)
//! application/json                   content type (empty line: none)
//! {"body": "…"}                      the body: every remaining byte
//! ```
//!
//! An unknown app (or `*`) sends the delivery to every connector; a missing
//! variant is 0, a missing method POST. (Not `arbitrary`: its byte layout
//! cannot be written by hand, and the seeds are the connectors' own test
//! payloads.)

#![allow(dead_code)]

use std::sync::LazyLock;

use crmbridge_connectors::{ConnectionView, InboundRequest, Registry};
use serde_json::{Value, json};

/// Settings each connector is exercised with; every one passes the
/// connector's `validate_settings` (checked when the registry is built).
pub fn settings_for(app: &str) -> Vec<Value> {
    match app {
        "generic" => vec![
            json!({}),
            json!({"event_id_pointer": "/id", "kind": "order.created"}),
            json!({"event_id_pointer": "/id", "kind_pointer": "/type", "subject_type": "deal",
                   "subject_id_pointer": "/deal/id", "occurred_at_pointer": "/at"}),
        ],
        "calltouch" => vec![
            json!({"site_id": 12345}),
            json!({"site_id": "12345", "crm_name": "crmbridge", "default_region": "RU"}),
        ],
        "moysklad" => vec![json!({}), json!({"organization": "org-1"})],
        "retailcrm" => vec![json!({"base_url": "https://demo.retailcrm.ru", "site": "shop"})],
        "nethunt" => vec![json!({}), json!({"time_zone": "Europe/Kyiv"})],
        "kado" => vec![
            json!({"base_url": "https://kado-adapter.example.com", "company_id": "co_1"}),
            json!({"base_url": "https://kado-adapter.example.com", "company_id": "co_1", "teams": ["t_sales"]}),
        ],
        "ringostat" => vec![
            json!({}),
            json!({"keys": {"caller": ["phone", "caller_id"], "call_id": "call"}, "timezone": "UTC", "default_region": "UA"}),
        ],
        "worksection" => vec![
            json!({"base_url": "https://demo.worksection.com"}),
            json!({"base_url": "https://demo.worksection.com", "auth_scheme": "header",
                   "time_zone": "Europe/Kyiv"}),
        ],
        "planfix" => vec![
            json!({"base_url": "https://demo.planfix.com/rest"}),
            json!({"base_url": "https://demo.planfix.com/rest", "chat_endpoint": "https://demo.planfix.com/webchat/api",
                   "provider_id": "crmbridge", "default_region": "RU"}),
        ],
        _ => vec![json!({})],
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::builtin();
    for app in registry.apps() {
        let Some(connector) = registry.get(app) else {
            continue;
        };
        for settings in settings_for(app) {
            // Test mode: some vendors (KADO) have no domain to check against.
            if let Err(errors) = connector.settings.validate_settings(&settings, true) {
                panic!("harness settings for {app} are invalid: {settings} {errors:?}");
            }
        }
    }
    registry
});

/// A delivery read from an input.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `None`: every connector.
    pub app: Option<String>,
    pub variant: usize,
    pub method: String,
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Reads an input (see the module docs); never fails.
pub fn parse(data: &[u8]) -> Delivery {
    let mut rest = data;
    let mut line = || {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let (head, tail) = rest.split_at(end);
        rest = tail.get(1..).unwrap_or_default();
        String::from_utf8_lossy(head)
            .trim_end_matches('\r')
            .to_owned()
    };
    let header = line();
    let query = line();
    let content_type = line();
    let mut words = header.split_whitespace();
    let app = words.next().map(str::to_owned).filter(|app| app != "*");
    let variant = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let method = words.next().unwrap_or("POST").to_owned();
    Delivery {
        app,
        variant,
        method,
        query: form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        content_type: (!content_type.is_empty()).then_some(content_type),
        body: rest.to_vec(),
    }
}

/// Decodes the delivery with the connector it names (or all of them):
/// the number of events decoded, per connector tried (0 when refused).
///
/// Invariants: no decoder panics; decoding is deterministic (event ids are
/// derived from it, so a redelivery must decode the same); every event's
/// kind is in its connector's namespace.
pub fn decode(data: &[u8]) -> Vec<(&'static str, usize)> {
    let delivery = parse(data);
    let registry = &*REGISTRY;
    let apps: Vec<&'static str> = match &delivery.app {
        Some(app) if registry.get(app).is_some() => {
            registry.apps().filter(|known| known == app).collect()
        }
        _ => registry.apps().collect(),
    };
    let request = InboundRequest {
        method: &delivery.method,
        query: &delivery.query,
        content_type: delivery.content_type.as_deref(),
        body: &delivery.body,
        headers: &[],
        url: None,
    };
    let mut decoded = Vec::new();
    for app in apps {
        let Some(connector) = registry.get(app).and_then(|v| v.webhooks.as_ref()) else {
            continue;
        };
        let variants = settings_for(app);
        let settings = &variants[delivery.variant % variants.len()];
        let connection = ConnectionView {
            id: "con_fuzz",
            settings,
            signing_secret: Some("fuzz-signing-secret"),
        };
        let first = connector.decode_webhook(connection, &request);
        let second = connector.decode_webhook(connection, &request);
        assert!(first == second, "{app}: decoding is not deterministic");
        let events = first.unwrap_or_default();
        for event in &events {
            assert!(
                event.kind.starts_with(&format!("{app}.")),
                "{app} decoded an event of kind {:?}",
                event.kind
            );
        }
        decoded.push((app, events.len()));
    }
    decoded
}
