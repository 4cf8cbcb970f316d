//! Fake MoySklad JSON API 1.2 (`https://api.moysklad.ru/api/remap/1.2`).
//!
//! Mirrors (from the official doc sources, see
//! `shared/connectors/src/vendors/moysklad/API.md`):
//! * auth: `Authorization: Bearer <token>` or `Basic base64(login:password)`;
//!   anything else → 401 with an `errors[]` body, code 1056, and
//!   `X-Lognex-Auth` headers. `POST /security/token` with Basic auth issues
//!   the token.
//! * `Accept-Encoding: gzip` is mandatory: without it → 415 with an empty
//!   body; every non-empty answer is gzip-compressed (`Content-Encoding: gzip`).
//! * bodies must be `Content-Type: application/json` (else 415, code 1037).
//! * `entity/counterparty`: create (object or array, 200), get, update, list
//!   with `filter` (`=` exact, `!=`, `~` substring, `~=` prefix, `=~` suffix,
//!   `<`/`>`/`<=`/`>=`, `;`-joined, repeated `=` on a field is OR, `\;`
//!   escapes), `search` (substring over name/code/legalTitle/email/phone),
//!   `limit` (1..1000, default 1000) / `offset`, `order`.
//! * `entity/customerorder`: create requiring `organization` and `agent` metas
//!   (412, code 3000), `syncId` replay (same syncId → the already-created order,
//!   no duplicate), `state` and `attributes` metas validated against the
//!   metadata, hrefs checked to point at this server (code 1059); get, `PUT`
//!   (merge; `syncId` immutable, code 1047), list with
//!   `filter=updated>=YYYY-MM-DD HH:MM:SS` (Moscow time), `order=updated,asc`,
//!   `expand` (agent, organization, state; only when `limit` ≤ 100, as the
//!   doc says), `metadata`, `metadata/attributes`, `metadata/states/{id}`.
//! * `entity/organization`: one organization.
//! * list answers `{context, meta{href,type,mediaType,size,limit,offset,nextHref?,previousHref?}, rows}`
//!   with `meta.size` the total; all hrefs built from this server's base URL;
//!   timestamps `YYYY-MM-DD HH:MM:SS.mmm` in Moscow time; empty fields omitted.
//! * rate limits (optional strict mode, [`RateLimit`]): more than N requests
//!   in a window → 429, code 1049, `X-Lognex-Retry-After` (ms); more than 5
//!   requests in parallel → 429, code 1073. Rate headers on every answer.
//! * webhooks: `entity/webhook` CRUD (`entityType`, `action`, `url`,
//!   `diffType`, `enabled`; (entityType, action, url) unique, code 3006).
//!   Every change is queued as a [`PendingEvent`]; a test sends them with
//!   [`FakeMoySklad::deliver_webhooks`] (honouring
//!   `X-Lognex-WebHook-DisableByPrefix` of the writing request), or sends one
//!   by hand with [`FakeMoySklad::send_webhook`]. Delivery: POST
//!   `{auditContext, events[]}` to `url?requestId=<uuid>` with MoySklad's
//!   User-Agent, 1500 ms timeout, up to 3 immediate retries with the same
//!   `requestId` unless 200/204. One event per POST (real MoySklad may batch);
//!   [`FakeMoySklad::send_webhook_events`] sends several [`WebhookEvent`]s
//!   (`PROCESSED` of an `async` task among them, if wanted) in one POST.
//!
//! Uncertain (the fake's choice in brackets):
//! * whether `Accept: application/json` without charset is rejected (1062)
//!   [accepted; only an `Accept` naming neither JSON nor `*/*` is rejected];
//! * whether the 415 gzip check comes before auth [gzip first];
//! * error codes for unknown filter fields / bad `limit` / unknown paths
//!   [1002 / 1011 / 1005, status 400/400/404]; the 5xx body [`errors[]` with a
//!   message only];
//! * metadata `attributes`: the notes show an inline array [inline array of
//!   full attribute objects; also `GET …/metadata/attributes` as a list];
//! * `syncId` replay returns the existing entity unchanged [yes, even if the
//!   replayed body differs];
//! * bulk (array) create with one bad item [that item's place in the answer
//!   holds `{"errors":[…]}`, the others are created, status 200];
//! * `search` phone normalisation [none: raw case-insensitive substring];
//! * the seed article's "Символьный код" of attributes (source, medium,
//!   utm_*, gclid, tags) has no field in API 1.2 [attributes carry names only].

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::{now_msk, parse_naive, uuid_v4};

/// The path prefix of API 1.2 on the fake (and on the real host).
pub const API_PREFIX: &str = "/api/remap/1.2";

/// The User-Agent of MoySklad's webhook sender.
pub const WEBHOOK_USER_AGENT: &str = "MoySklad webhook touch agent 2.0 (/https://www.moysklad.ru)";

/// Strict rate-limit emulation (off by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window (MoySklad: 45).
    pub requests: u32,
    /// The window (MoySklad: 3 s).
    pub window: Duration,
    /// Parallel requests allowed (MoySklad: 5 per user/app).
    pub max_parallel: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests: 45,
            window: Duration::from_secs(3),
            max_parallel: 5,
        }
    }
}

/// What [`FakeMoySklad::start_with`] accepts.
#[derive(Debug, Clone, Default)]
pub struct MoySkladConfig {
    /// The Bearer token accepted.
    pub token: String,
    /// Login (`admin@company`) and password accepted with Basic auth.
    pub basic: Option<(String, String)>,
}

impl MoySkladConfig {
    /// Accepts `Authorization: Bearer <token>`.
    pub fn new(token: &str) -> Self {
        MoySkladConfig {
            token: token.to_owned(),
            basic: None,
        }
    }

    /// Also accepts `Authorization: Basic base64(login:password)`.
    pub fn with_basic(mut self, login: &str, password: &str) -> Self {
        self.basic = Some((login.to_owned(), password.to_owned()));
        self
    }
}

/// One attempt of the webhook sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// HTTP status received, if any.
    pub status: Option<u16>,
    /// Transport error or timeout, if no status.
    pub error: Option<String>,
}

/// The outcome of [`FakeMoySklad::send_webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The `requestId` query parameter, the same on every attempt.
    pub request_id: String,
    /// The body sent.
    pub payload: Value,
    /// 1 to 4 attempts: MoySklad retries at once, up to 3 times, unless it
    /// got 200 or 204 within 1500 ms.
    pub attempts: Vec<WebhookAttempt>,
}

impl WebhookDelivery {
    /// The status of the last attempt.
    pub fn status(&self) -> Option<u16> {
        self.attempts.last().and_then(|a| a.status)
    }

    /// Whether MoySklad would count this as delivered (200 or 204).
    pub fn delivered(&self) -> bool {
        matches!(self.status(), Some(200 | 204))
    }
}

/// One event of a webhook delivery built by hand, for
/// [`FakeMoySklad::send_webhook_events`] (several events in one POST, as
/// MoySklad may send them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `meta.type`: an entity type (`customerorder`, `counterparty`, …) or
    /// `async`, an asynchronous task (whose `meta.href` is `{base}/async/{id}`).
    pub entity_type: String,
    /// The entity's (or the task's) id.
    pub id: String,
    /// `CREATE`, `UPDATE`, `DELETE`, or `PROCESSED` (asynchronous tasks).
    /// Sent as given (upper-cased), not checked.
    pub action: String,
    /// `updatedFields`, sent only for an `UPDATE` and only when not empty.
    pub updated_fields: Vec<String>,
}

impl WebhookEvent {
    /// An event without `updatedFields`.
    pub fn new(entity_type: &str, id: &str, action: &str) -> Self {
        WebhookEvent {
            entity_type: entity_type.to_owned(),
            id: id.to_owned(),
            action: action.to_owned(),
            updated_fields: Vec::new(),
        }
    }

    /// The same event with `updatedFields` (as a `diffType=FIELDS` webhook gets).
    pub fn with_fields(mut self, fields: &[&str]) -> Self {
        self.updated_fields = fields.iter().map(|f| (*f).to_owned()).collect();
        self
    }
}

#[derive(Debug, Clone)]
struct StateDef {
    id: String,
    name: String,
    color: i64,
    state_type: String,
}

#[derive(Debug, Clone)]
struct AttrDef {
    id: String,
    name: String,
    kind: String,
    required: bool,
}

#[derive(Debug)]
struct Data {
    counterparties: Vec<Value>,
    orders: Vec<Value>,
    positions: HashMap<String, Vec<Value>>,
    states: Vec<StateDef>,
    attributes: Vec<AttrDef>,
    order_seq: u64,
    clock_offset: chrono::Duration,
    retry_after: Duration,
    rate_limit: Option<RateLimit>,
    window_start: Option<Instant>,
    window_count: u32,
    rate_limited: usize,
    webhooks: Vec<Value>,
    pending: Vec<PendingEvent>,
    /// `X-Lognex-WebHook-DisableByPrefix` values of the request being handled.
    disable_prefixes: Vec<String>,
}

/// A change that MoySklad would announce to subscribed webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// `counterparty`, `customerorder`.
    pub entity_type: String,
    /// The entity id.
    pub id: String,
    /// `CREATE`, `UPDATE`, `DELETE`.
    pub action: String,
    /// Fields the change touched (for `diffType=FIELDS` webhooks).
    pub updated_fields: Vec<String>,
    /// URL prefixes the writing request asked not to notify
    /// (`X-Lognex-WebHook-DisableByPrefix`).
    pub disabled_prefixes: Vec<String>,
}

struct Inner {
    origin: String,
    base: String,
    config: MoySkladConfig,
    account_id: String,
    employee_id: String,
    org_id: String,
    currency_id: String,
    data: Mutex<Data>,
}

/// A running fake MoySklad. Dropping it stops the server.
pub struct FakeMoySklad {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeMoySklad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeMoySklad")
            .field("base_url", &self.inner.base)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

const DEFAULT_STATES: &[(&str, i64, &str)] = &[
    ("Новый", 15_106_326, "Regular"),
    ("Подтвержден", 40_931, "Regular"),
    ("Собран", 8_825_440, "Regular"),
    ("Отгружен", 9_081_856, "Regular"),
    ("Доставлено", 34_617, "Successful"),
    ("Выполнен", 34_617, "Successful"),
    ("Возврат", 10_774_205, "Unsuccessful"),
    ("Отменен", 15_280_409, "Unsuccessful"),
];

/// The order attributes the seed article asks the user to create
/// (name; its "symbolic code" in the article; type).
const DEFAULT_ATTRIBUTES: &[(&str, &str)] = &[
    ("Источник", "string"),         // source
    ("Канал", "string"),            // medium
    ("utm_source", "string"),       // utm_source
    ("utm_medium", "string"),       // utm_medium
    ("utm_campaign", "string"),     // utm_campaign
    ("utm_content", "string"),      // utm_content
    ("utm_term", "string"),         // utm_term
    ("Google Client ID", "string"), // gclid
    ("Теги", "text"),               // tags
];

const READ_ONLY: &[&str] = &[
    "id",
    "accountId",
    "meta",
    "created",
    "updated",
    "sum",
    "vatSum",
    "payedSum",
    "shippedSum",
    "invoicedSum",
    "reservedSum",
    "deleted",
    "printed",
    "published",
    "salesAmount",
    "owner",
    "group",
];

impl FakeMoySklad {
    /// Starts a fake accepting `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> Result<Self, FakeError> {
        Self::start_with(MoySkladConfig::new(token)).await
    }

    /// Starts a fake with the given credentials.
    pub async fn start_with(config: MoySkladConfig) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|addr| {
            let origin = format!("http://{addr}");
            let inner = Arc::new(Inner {
                base: format!("{origin}{API_PREFIX}"),
                origin,
                config,
                account_id: uuid_v4(),
                employee_id: uuid_v4(),
                org_id: uuid_v4(),
                currency_id: uuid_v4(),
                data: Mutex::new(Data {
                    counterparties: Vec::new(),
                    orders: Vec::new(),
                    positions: HashMap::new(),
                    states: DEFAULT_STATES
                        .iter()
                        .map(|(n, c, t)| StateDef {
                            id: uuid_v4(),
                            name: (*n).to_owned(),
                            color: *c,
                            state_type: (*t).to_owned(),
                        })
                        .collect(),
                    attributes: DEFAULT_ATTRIBUTES
                        .iter()
                        .map(|(n, t)| AttrDef {
                            id: uuid_v4(),
                            name: (*n).to_owned(),
                            kind: (*t).to_owned(),
                            required: false,
                        })
                        .collect(),
                    order_seq: 0,
                    clock_offset: chrono::Duration::zero(),
                    retry_after: Duration::from_millis(200),
                    rate_limit: None,
                    window_start: None,
                    window_count: 0,
                    rate_limited: 0,
                    webhooks: Vec::new(),
                    pending: Vec::new(),
                    disable_prefixes: Vec::new(),
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(MsVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeMoySklad { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT/api/remap/1.2` — configure the connector with this.
    pub fn base_url(&self) -> String {
        self.inner.base.clone()
    }

    /// The Bearer token accepted.
    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    /// The account id stamped on every entity.
    pub fn account_id(&self) -> &str {
        &self.inner.account_id
    }

    /// The id of the one organization.
    pub fn organization_id(&self) -> &str {
        &self.inner.org_id
    }

    /// The href of the one organization.
    pub fn organization_href(&self) -> String {
        self.inner.href("organization", &self.inner.org_id)
    }

    /// The `{"meta":…}` reference to the organization, ready for an order body.
    pub fn organization_ref(&self) -> Value {
        json!({"meta": self.inner.meta("organization", &self.inner.org_id)})
    }

    /// The href of a counterparty by id.
    pub fn counterparty_href(&self, id: &str) -> String {
        self.inner.href("counterparty", id)
    }

    /// The href of an order by id.
    pub fn order_href(&self, id: &str) -> String {
        self.inner.href("customerorder", id)
    }

    /// The href of an order state by name.
    pub fn state_href(&self, name: &str) -> Option<String> {
        self.state_id(name).map(|id| self.inner.state_href(&id))
    }

    /// The id of an order state by name.
    pub fn state_id(&self, name: &str) -> Option<String> {
        let d = lock(&self.inner.data);
        d.states
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.id.clone())
    }

    /// The names of the order states, in order (the first is the default).
    pub fn state_names(&self) -> Vec<String> {
        lock(&self.inner.data)
            .states
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Adds an order state (`state_type`: `Regular`, `Successful`, `Unsuccessful`); returns its id.
    pub fn add_state(&self, name: &str, state_type: &str) -> String {
        let id = uuid_v4();
        lock(&self.inner.data).states.push(StateDef {
            id: id.clone(),
            name: name.to_owned(),
            color: 0,
            state_type: state_type.to_owned(),
        });
        id
    }

    /// The href of an order attribute by name.
    pub fn attribute_href(&self, name: &str) -> Option<String> {
        self.attribute_id(name).map(|id| self.inner.attr_href(&id))
    }

    /// The id of an order attribute by name.
    pub fn attribute_id(&self, name: &str) -> Option<String> {
        let d = lock(&self.inner.data);
        d.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id.clone())
    }

    /// Adds an order attribute (`kind`: `string`, `text`, `long`, `double`,
    /// `boolean`, `time`, …); returns its id.
    pub fn add_attribute(&self, name: &str, kind: &str, required: bool) -> String {
        let id = uuid_v4();
        lock(&self.inner.data).attributes.push(AttrDef {
            id: id.clone(),
            name: name.to_owned(),
            kind: kind.to_owned(),
            required,
        });
        id
    }

    /// Removes an order attribute by name (to test "missing custom field").
    pub fn remove_attribute(&self, name: &str) -> bool {
        let mut d = lock(&self.inner.data);
        let before = d.attributes.len();
        d.attributes.retain(|a| a.name != name);
        d.attributes.len() != before
    }

    /// Snapshot of all counterparties, in creation order.
    pub fn counterparties(&self) -> Vec<Value> {
        lock(&self.inner.data).counterparties.clone()
    }

    /// One counterparty by id.
    pub fn counterparty(&self, id: &str) -> Option<Value> {
        lock(&self.inner.data)
            .counterparties
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    }

    /// Snapshot of all customer orders, in creation order.
    /// An order's lines, in the order they were added.
    pub fn order_positions(&self, order_id: &str) -> Vec<Value> {
        lock(&self.inner.data)
            .positions
            .get(order_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn orders(&self) -> Vec<Value> {
        lock(&self.inner.data).orders.clone()
    }

    /// One customer order by id.
    pub fn order(&self, id: &str) -> Option<Value> {
        lock(&self.inner.data)
            .orders
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    }

    /// The value of an order's attribute, by attribute name.
    pub fn order_attribute(&self, order_id: &str, name: &str) -> Option<Value> {
        let order = self.order(order_id)?;
        order["attributes"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .map(|a| a["value"].clone())
    }

    /// The name of an order's state.
    pub fn order_state_name(&self, order_id: &str) -> Option<String> {
        let order = self.order(order_id)?;
        let d = lock(&self.inner.data);
        self.inner.state_name_of(&d, &order)
    }

    /// Puts a counterparty in directly (as if created in the UI); returns it.
    pub fn insert_counterparty(&self, body: Value) -> Result<Value, FakeError> {
        let mut d = lock(&self.inner.data);
        self.inner
            .create_counterparty(&mut d, &body)
            .map_err(|r| FakeError::Invalid(String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// Changes an order's state (as a user would in the UI) and its `updated`.
    pub fn set_order_state(&self, order_id: &str, state_name: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let state_id = d
            .states
            .iter()
            .find(|s| s.name == state_name)
            .map(|s| s.id.clone())
            .ok_or_else(|| FakeError::Invalid(format!("unknown state {state_name}")))?;
        let now = self.inner.now(&d);
        let order = d
            .orders
            .iter_mut()
            .find(|o| o["id"] == order_id)
            .ok_or_else(|| FakeError::NotFound(format!("customerorder {order_id}")))?;
        order["state"] = json!({"meta": self.inner.state_meta(&state_id)});
        order["updated"] = json!(now);
        d.disable_prefixes.clear();
        Inner::record_event(
            &mut d,
            "customerorder",
            order_id,
            "UPDATE",
            vec!["state".into()],
        );
        Ok(())
    }

    /// Sets an order's `payedSum` (kopecks, like every MoySklad sum) and its `updated`.
    pub fn set_order_paid(&self, order_id: &str, payed_sum: f64) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let now = self.inner.now(&d);
        let order = d
            .orders
            .iter_mut()
            .find(|o| o["id"] == order_id)
            .ok_or_else(|| FakeError::NotFound(format!("customerorder {order_id}")))?;
        order["payedSum"] = json!(payed_sum);
        order["updated"] = json!(now);
        d.disable_prefixes.clear();
        Inner::record_event(
            &mut d,
            "customerorder",
            order_id,
            "UPDATE",
            vec!["payedSum".into()],
        );
        Ok(())
    }

    /// Moves the fake's clock (used for `created`, `updated`, `moment`) forward.
    pub fn advance_clock(&self, by: Duration) {
        let mut d = lock(&self.inner.data);
        d.clock_offset +=
            chrono::Duration::from_std(by).unwrap_or_else(|_| chrono::Duration::zero());
    }

    /// The fake's current time in MoySklad's format (`YYYY-MM-DD HH:MM:SS.mmm`, MSK).
    pub fn now(&self) -> String {
        let d = lock(&self.inner.data);
        self.inner.now(&d)
    }

    /// The `X-Lognex-Retry-After` an injected `TooManyRequests` carries (default 200 ms).
    pub fn set_retry_after(&self, after: Duration) {
        lock(&self.inner.data).retry_after = after;
    }

    /// Turns strict rate-limit emulation on (`Some`) or off (`None`).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut d = lock(&self.inner.data);
        d.rate_limit = limit;
        d.window_start = None;
        d.window_count = 0;
    }

    /// How many requests the strict rate limit refused (1049 and 1073).
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limited
    }

    /// The webhook body MoySklad sends for `action` (`CREATE`, `UPDATE`,
    /// `DELETE`) on an order: `{auditContext, events:[{meta, action, accountId}]}`.
    pub fn webhook_payload(&self, order_id: &str, action: &str) -> Value {
        self.webhook_payload_with_fields(order_id, action, &[])
    }

    /// Like [`Self::webhook_payload`], with `updatedFields` (webhooks with
    /// `diffType=FIELDS`, `UPDATE` only).
    pub fn webhook_payload_with_fields(
        &self,
        order_id: &str,
        action: &str,
        updated_fields: &[&str],
    ) -> Value {
        let event =
            WebhookEvent::new("customerorder", order_id, action).with_fields(updated_fields);
        self.webhook_batch_payload(std::slice::from_ref(&event))
    }

    /// The body of one delivery holding every event given, in order:
    /// `{"auditContext": {meta, uid, moment}, "events": [{meta: {type, href}, action, accountId, updatedFields?}, …]}`.
    pub fn webhook_batch_payload(&self, events: &[WebhookEvent]) -> Value {
        let moment = {
            let d = lock(&self.inner.data);
            self.inner.now(&d).chars().take(19).collect::<String>()
        };
        let events: Vec<Value> = events.iter().map(|e| self.webhook_event_json(e)).collect();
        json!({
            "auditContext": {
                "meta": {"type": "audit", "href": format!("{}/audit/{}", self.inner.base, uuid_v4())},
                "uid": "admin@fake",
                "moment": moment,
            },
            "events": events,
        })
    }

    /// One item of a delivery's `events`.
    pub fn webhook_event_json(&self, event: &WebhookEvent) -> Value {
        let action = event.action.to_ascii_uppercase();
        let href = if event.entity_type == "async" {
            format!("{}/async/{}", self.inner.base, event.id)
        } else {
            self.inner.href(&event.entity_type, &event.id)
        };
        let mut v = json!({
            "meta": {"type": event.entity_type, "href": href},
            "action": action,
            "accountId": self.inner.account_id,
        });
        if !event.updated_fields.is_empty() && action == "UPDATE" {
            v["updatedFields"] = json!(event.updated_fields);
        }
        v
    }

    /// POSTs one delivery holding all `events` (in that order) to
    /// `target_url`, as MoySklad does (see [`Self::send_webhook`]):
    /// `?requestId=<uuid>`, the same on every retry.
    pub async fn send_webhook_events(
        &self,
        target_url: &str,
        events: &[WebhookEvent],
    ) -> Result<WebhookDelivery, FakeError> {
        let payload = self.webhook_batch_payload(events);
        send_webhook_payload(target_url, payload, &uuid_v4()).await
    }

    /// Webhook subscriptions created through `POST /entity/webhook`.
    pub fn webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data).webhooks.clone()
    }

    /// Changes not yet announced by [`Self::deliver_webhooks`] (every create,
    /// update and delete, through the API or the helpers, in order).
    pub fn pending_events(&self) -> Vec<PendingEvent> {
        lock(&self.inner.data).pending.clone()
    }

    /// Announces every pending change to the subscribed webhooks, as MoySklad
    /// would: one POST per (event, matching enabled webhook), skipping URLs
    /// that the writing request disabled with `X-Lognex-WebHook-DisableByPrefix`;
    /// `updatedFields` only for `diffType=FIELDS`. Clears the pending list.
    /// Deterministic: nothing is sent until a test calls this.
    pub async fn deliver_webhooks(&self) -> Result<Vec<WebhookDelivery>, FakeError> {
        let (events, hooks) = {
            let mut d = lock(&self.inner.data);
            (std::mem::take(&mut d.pending), d.webhooks.clone())
        };
        let mut out = Vec::new();
        for ev in events {
            for hook in &hooks {
                let url = hook["url"].as_str().unwrap_or_default();
                let matches = hook["enabled"] == true
                    && hook["entityType"] == ev.entity_type.as_str()
                    && hook["action"] == ev.action.as_str()
                    && !ev
                        .disabled_prefixes
                        .iter()
                        .any(|p| url.starts_with(p.as_str()));
                if !matches {
                    continue;
                }
                let fields: Vec<&str> = if hook["diffType"] == "FIELDS" {
                    ev.updated_fields.iter().map(String::as_str).collect()
                } else {
                    Vec::new()
                };
                let payload = self.event_payload(&ev.entity_type, &ev.id, &ev.action, &fields);
                out.push(send_webhook_payload(url, payload, &uuid_v4()).await?);
            }
        }
        Ok(out)
    }

    fn event_payload(&self, entity_type: &str, id: &str, action: &str, fields: &[&str]) -> Value {
        let mut v = self.webhook_payload_with_fields(id, action, fields);
        v["events"][0]["meta"] =
            json!({"type": entity_type, "href": self.inner.href(entity_type, id)});
        v
    }

    /// POSTs the webhook for an order to `target_url` the way MoySklad does
    /// (`?requestId=<uuid>`, its User-Agent, JSON, 1500 ms timeout, up to 3
    /// immediate retries with the same requestId unless 200/204).
    pub async fn send_webhook(
        &self,
        target_url: &str,
        order_id: &str,
        action: &str,
    ) -> Result<WebhookDelivery, FakeError> {
        let payload = self.webhook_payload(order_id, action);
        send_webhook_payload(target_url, payload, &uuid_v4()).await
    }
}

/// Sends any MoySklad webhook body like MoySklad does (see
/// [`FakeMoySklad::send_webhook`]), with the given `requestId`.
pub async fn send_webhook_payload(
    target_url: &str,
    payload: Value,
    request_id: &str,
) -> Result<WebhookDelivery, FakeError> {
    let mut url = url::Url::parse(target_url)
        .map_err(|e| FakeError::Invalid(format!("{target_url}: {e}")))?;
    url.query_pairs_mut().append_pair("requestId", request_id);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .user_agent(WEBHOOK_USER_AGENT)
        .build()?;
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let attempt = match client.post(url.clone()).json(&payload).send().await {
            Ok(resp) => WebhookAttempt {
                status: Some(resp.status().as_u16()),
                error: None,
            },
            Err(e) => WebhookAttempt {
                status: None,
                error: Some(e.to_string()),
            },
        };
        let ok = matches!(attempt.status, Some(200 | 204));
        attempts.push(attempt);
        if ok {
            break;
        }
    }
    Ok(WebhookDelivery {
        request_id: request_id.to_owned(),
        payload,
        attempts,
    })
}

struct MsVendor(Arc<Inner>);

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if enc.write_all(body).is_err() {
        return body.to_vec();
    }
    enc.finish().unwrap_or_else(|_| body.to_vec())
}

fn accepts_gzip(req: &Req) -> bool {
    req.headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q0 = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q0
        })
}

fn finish(mut resp: Resp, req: &Req) -> Resp {
    if !resp.body.is_empty() && accepts_gzip(req) {
        resp.body = gzip(&resp.body);
        resp = resp.with_header("content-encoding", "gzip");
    }
    resp
}

impl Inner {
    fn now(&self, d: &Data) -> String {
        now_msk(d.clock_offset)
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    }

    fn href(&self, kind: &str, id: &str) -> String {
        format!("{}/entity/{kind}/{id}", self.base)
    }

    fn meta(&self, kind: &str, id: &str) -> Value {
        json!({
            "href": self.href(kind, id),
            "metadataHref": format!("{}/entity/{kind}/metadata", self.base),
            "type": kind,
            "mediaType": "application/json",
            "uuidHref": format!("{}/app/#{kind}/edit?id={id}", self.origin),
        })
    }

    fn state_href(&self, id: &str) -> String {
        format!("{}/entity/customerorder/metadata/states/{id}", self.base)
    }

    fn state_meta(&self, id: &str) -> Value {
        json!({
            "href": self.state_href(id),
            "metadataHref": format!("{}/entity/customerorder/metadata", self.base),
            "type": "state",
            "mediaType": "application/json",
        })
    }

    fn attr_href(&self, id: &str) -> String {
        format!(
            "{}/entity/customerorder/metadata/attributes/{id}",
            self.base
        )
    }

    fn attr_meta(&self, id: &str) -> Value {
        json!({"href": self.attr_href(id), "type": "attributemetadata", "mediaType": "application/json"})
    }

    fn state_json(&self, s: &StateDef) -> Value {
        json!({
            "meta": self.state_meta(&s.id),
            "id": s.id,
            "accountId": self.account_id,
            "name": s.name,
            "color": s.color,
            "stateType": s.state_type,
            "entityType": "customerorder",
        })
    }

    fn attr_json(&self, a: &AttrDef) -> Value {
        json!({
            "meta": self.attr_meta(&a.id),
            "id": a.id,
            "name": a.name,
            "type": a.kind,
            "required": a.required,
            "show": true,
        })
    }

    fn organization_json(&self, d: &Data) -> Value {
        json!({
            "meta": self.meta("organization", &self.org_id),
            "id": self.org_id,
            "accountId": self.account_id,
            "name": "ООО \"Фейк\"",
            "externalCode": "fake-org",
            "archived": false,
            "created": self.now(d),
            "updated": self.now(d),
            "companyType": "legal",
            "legalTitle": "Общество с ограниченной ответственностью \"Фейк\"",
            "inn": "7700000000",
        })
    }

    fn error(&self, status: StatusCode, code: i64, msg: &str, parameter: Option<&str>) -> Resp {
        let mut e = json!({
            "error": msg,
            "code": code,
            "moreInfo": format!("{}/doc#обработка-ошибок-{code}", self.base),
        });
        if let Some(p) = parameter {
            e["parameter"] = json!(p);
        }
        Resp::json(status, &json!({"errors": [e]}))
    }

    fn not_found(&self, what: &str) -> Resp {
        self.error(
            StatusCode::NOT_FOUND,
            1021,
            &format!("Объект с UUID '{what}' не найден"),
            None,
        )
    }

    fn state_name_of(&self, d: &Data, entity: &Value) -> Option<String> {
        let href = entity["state"]["meta"]["href"].as_str()?;
        let id = href.rsplit('/').next()?;
        d.states.iter().find(|s| s.id == id).map(|s| s.name.clone())
    }

    /// Resolves `{"meta":{"href":…}}` to an id of `kind` on this server.
    fn ref_id(&self, v: &Value, kind: &str, field: &str) -> R<String> {
        let href = v["meta"]["href"].as_str().ok_or_else(|| {
            self.error(
                StatusCode::BAD_REQUEST,
                2016,
                &format!("Неверный тип поля '{field}': ожидается объект с meta"),
                Some(field),
            )
        })?;
        let prefix = format!("{}/entity/{kind}/", self.base);
        let Some(id) = href.strip_prefix(&prefix) else {
            if !href.starts_with(&self.base) {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    1059,
                    &format!("Ссылка '{href}' указывает на другой сервер"),
                    Some(field),
                ));
            }
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2016,
                &format!("Поле '{field}' должно ссылаться на {kind}"),
                Some(field),
            ));
        };
        Ok(id.split('?').next().unwrap_or_default().to_owned())
    }

    fn strip_read_only(body: &Value) -> Map<String, Value> {
        let mut m = body.as_object().cloned().unwrap_or_default();
        for k in READ_ONLY {
            m.remove(*k);
        }
        m
    }

    fn create_counterparty(&self, d: &mut Data, body: &Value) -> R<Value> {
        if !body.is_object() {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2000,
                "Ошибка формата: ожидается объект",
                None,
            ));
        }
        if let Some(href) = body["meta"]["href"].as_str() {
            let id = href.rsplit('/').next().unwrap_or_default().to_owned();
            return self.update_counterparty(d, &id, body);
        }
        if let Some(sync) = body["syncId"].as_str()
            && let Some(existing) = d.counterparties.iter().find(|c| c["syncId"] == sync)
        {
            return Ok(existing.clone());
        }
        if body["name"].as_str().is_none_or(|n| n.trim().is_empty()) {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                3000,
                "Ошибка сохранения объекта: поле 'name' не может быть пустым или отсутствовать",
                Some("name"),
            ));
        }
        self.check_email(body)?;
        let mut m = Self::strip_read_only(body);
        let id = uuid_v4();
        let now = self.now(d);
        m.insert("meta".into(), self.meta("counterparty", &id));
        m.insert("id".into(), json!(id));
        m.insert("accountId".into(), json!(self.account_id));
        m.insert(
            "owner".into(),
            json!({"meta": self.meta("employee", &self.employee_id)}),
        );
        m.insert("shared".into(), json!(false));
        m.entry("archived").or_insert(json!(false));
        m.entry("companyType").or_insert(json!("legal"));
        m.entry("externalCode").or_insert(json!(uuid_v4()));
        m.entry("tags").or_insert(json!([]));
        m.insert("created".into(), json!(now));
        m.insert("updated".into(), json!(now));
        m.insert("salesAmount".into(), json!(0.0));
        let v = Value::Object(m);
        d.counterparties.push(v.clone());
        Self::record_event(d, "counterparty", &id, "CREATE", Vec::new());
        Ok(v)
    }

    fn check_email(&self, body: &Value) -> R<()> {
        if let Some(email) = body["email"].as_str() {
            let ok = email.split_once('@').is_some_and(|(a, b)| {
                !a.is_empty() && b.contains('.') && !b.starts_with('.') && !b.ends_with('.')
            });
            if !ok && !email.is_empty() {
                return Err(self.error(
                    StatusCode::PRECONDITION_FAILED,
                    3015,
                    "Некорректный адрес электронной почты",
                    Some("email"),
                ));
            }
        }
        Ok(())
    }

    fn update_counterparty(&self, d: &mut Data, id: &str, body: &Value) -> R<Value> {
        if !body.is_object() {
            return Err(self.error(StatusCode::BAD_REQUEST, 2000, "Ошибка формата", None));
        }
        self.check_email(body)?;
        let now = self.now(d);
        let Some(cp) = d.counterparties.iter_mut().find(|c| c["id"] == id) else {
            return Err(self.not_found(id));
        };
        if let (Some(new), Some(old)) = (body["syncId"].as_str(), cp["syncId"].as_str())
            && new != old
        {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                1047,
                "Поле 'syncId' не может быть изменено",
                Some("syncId"),
            ));
        }
        if body.get("name").is_some() && body["name"].as_str().is_none_or(|n| n.trim().is_empty()) {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                3000,
                "Ошибка сохранения объекта: поле 'name' не может быть пустым или отсутствовать",
                Some("name"),
            ));
        }
        let m = Self::strip_read_only(body);
        let fields: Vec<String> = m.keys().cloned().collect();
        for (k, v) in m {
            if v.is_null() {
                if let Some(o) = cp.as_object_mut() {
                    o.remove(&k);
                }
            } else {
                cp[k] = v;
            }
        }
        cp["updated"] = json!(now);
        let out = cp.clone();
        Self::record_event(d, "counterparty", id, "UPDATE", fields);
        Ok(out)
    }

    /// Validates and normalises `attributes` of an order; merges into `existing`.
    fn order_attributes(&self, d: &Data, given: &Value, existing: &[Value]) -> R<Vec<Value>> {
        let Some(items) = given.as_array() else {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2016,
                "Поле 'attributes' должно быть массивом",
                Some("attributes"),
            ));
        };
        let mut out: Vec<Value> = existing.to_vec();
        for item in items {
            let href = item["meta"]["href"].as_str().unwrap_or_default();
            let prefix = format!("{}/entity/customerorder/metadata/attributes/", self.base);
            let id = match href.strip_prefix(&prefix) {
                Some(id) => id.to_owned(),
                None if !href.is_empty() && !href.starts_with(&self.base) => {
                    return Err(self.error(
                        StatusCode::BAD_REQUEST,
                        1059,
                        &format!("Ссылка '{href}' указывает на другой сервер"),
                        Some("attributes"),
                    ));
                }
                None => item["id"].as_str().unwrap_or_default().to_owned(),
            };
            let Some(def) = d.attributes.iter().find(|a| a.id == id) else {
                return Err(self.error(
                    StatusCode::PRECONDITION_FAILED,
                    1021,
                    &format!("Дополнительное поле '{href}' не найдено"),
                    Some("attributes"),
                ));
            };
            let value = item.get("value").cloned().unwrap_or(Value::Null);
            let type_ok = match (def.kind.as_str(), &value) {
                (_, Value::Null) => true,
                ("string" | "text" | "link" | "time", Value::String(_)) => true,
                ("long", Value::Number(n)) => n.is_i64() || n.is_u64(),
                ("double", Value::Number(_)) => true,
                ("boolean", Value::Bool(_)) => true,
                ("string" | "text" | "link" | "time" | "long" | "double" | "boolean", _) => false,
                _ => true,
            };
            if !type_ok {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    2016,
                    &format!(
                        "Неверный тип значения дополнительного поля '{}': ожидается {}",
                        def.name, def.kind
                    ),
                    Some("attributes"),
                ));
            }
            out.retain(|a| a["id"] != def.id);
            if !value.is_null() {
                out.push(json!({
                    "meta": self.attr_meta(&def.id),
                    "id": def.id,
                    "name": def.name,
                    "type": def.kind,
                    "value": value,
                }));
            }
        }
        Ok(out)
    }

    fn state_ref(&self, d: &Data, given: &Value) -> R<Value> {
        let href = given["meta"]["href"].as_str().unwrap_or_default();
        let prefix = format!("{}/entity/customerorder/metadata/states/", self.base);
        let Some(id) = href.strip_prefix(&prefix) else {
            let code = if href.starts_with(&self.base) || href.is_empty() {
                2016
            } else {
                1059
            };
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                code,
                &format!("Неверная ссылка на статус '{href}'"),
                Some("state"),
            ));
        };
        if !d.states.iter().any(|s| s.id == id) {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                1021,
                &format!("Статус '{id}' не найден"),
                Some("state"),
            ));
        }
        Ok(json!({"meta": self.state_meta(id)}))
    }

    fn agent_ref(&self, d: &Data, given: &Value) -> R<Value> {
        let href = given["meta"]["href"].as_str().unwrap_or_default();
        if href.contains("/entity/organization/") {
            let id = self.ref_id(given, "organization", "agent")?;
            if id != self.org_id {
                return Err(self.not_found(&id));
            }
            return Ok(json!({"meta": self.meta("organization", &id)}));
        }
        let id = self.ref_id(given, "counterparty", "agent")?;
        if !d.counterparties.iter().any(|c| c["id"] == id.as_str()) {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                1021,
                &format!("Объект с UUID '{id}' не найден"),
                Some("agent"),
            ));
        }
        Ok(json!({"meta": self.meta("counterparty", &id)}))
    }

    fn org_ref(&self, given: &Value) -> R<Value> {
        let id = self.ref_id(given, "organization", "organization")?;
        if id != self.org_id {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                1021,
                &format!("Объект с UUID '{id}' не найден"),
                Some("organization"),
            ));
        }
        Ok(json!({"meta": self.meta("organization", &id)}))
    }

    fn positions_sum(positions: &[Value]) -> f64 {
        positions
            .iter()
            .map(|p| {
                let q = p["quantity"].as_f64().unwrap_or(1.0);
                let price = p["price"].as_f64().unwrap_or(0.0);
                let disc = p["discount"].as_f64().unwrap_or(0.0);
                q * price * (1.0 - disc / 100.0)
            })
            .sum()
    }

    fn create_order(&self, d: &mut Data, body: &Value) -> R<Value> {
        if !body.is_object() {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2000,
                "Ошибка формата: ожидается объект",
                None,
            ));
        }
        if let Some(href) = body["meta"]["href"].as_str() {
            let id = href.rsplit('/').next().unwrap_or_default().to_owned();
            return self.update_order(d, &id, body);
        }
        if let Some(sync) = body["syncId"].as_str()
            && let Some(existing) = d.orders.iter().find(|c| c["syncId"] == sync)
        {
            return Ok(existing.clone());
        }
        for field in ["organization", "agent"] {
            if body.get(field).is_none_or(Value::is_null) {
                return Err(self.error(
                    StatusCode::PRECONDITION_FAILED,
                    3000,
                    &format!(
                        "Ошибка сохранения объекта: поле '{field}' не может быть пустым или отсутствовать"
                    ),
                    Some(field),
                ));
            }
        }
        let organization = self.org_ref(&body["organization"])?;
        let agent = self.agent_ref(d, &body["agent"])?;
        let state = match body.get("state") {
            Some(s) if !s.is_null() => self.state_ref(d, s)?,
            _ => match d.states.first() {
                Some(s) => json!({"meta": self.state_meta(&s.id)}),
                None => Value::Null,
            },
        };
        let attributes = match body.get("attributes") {
            Some(a) if !a.is_null() => self.order_attributes(d, a, &[])?,
            _ => Vec::new(),
        };
        for def in d.attributes.iter().filter(|a| a.required) {
            if !attributes.iter().any(|a| a["id"] == def.id.as_str()) {
                return Err(self.error(
                    StatusCode::PRECONDITION_FAILED,
                    3000,
                    &format!("Не заполнено обязательное поле '{}'", def.name),
                    Some("attributes"),
                ));
            }
        }
        let positions: Vec<Value> = body["positions"].as_array().cloned().unwrap_or_default();
        self.check_positions(&positions)?;
        let positions: Vec<Value> = positions.iter().map(|p| self.position_row(p)).collect();
        let mut m = Self::strip_read_only(body);
        d.order_seq += 1;
        let id = uuid_v4();
        let now = self.now(d);
        m.insert("meta".into(), self.meta("customerorder", &id));
        m.insert("id".into(), json!(id));
        m.insert("accountId".into(), json!(self.account_id));
        m.insert(
            "owner".into(),
            json!({"meta": self.meta("employee", &self.employee_id)}),
        );
        m.insert("shared".into(), json!(false));
        m.entry("name")
            .or_insert(json!(format!("{:05}", d.order_seq)));
        m.entry("externalCode").or_insert(json!(uuid_v4()));
        m.entry("moment").or_insert(json!(now));
        m.entry("applicable").or_insert(json!(true));
        m.entry("vatEnabled").or_insert(json!(true));
        m.entry("vatIncluded").or_insert(json!(true));
        m.insert(
            "rate".into(),
            json!({"currency": {"meta": self.meta("currency", &self.currency_id)}}),
        );
        m.entry("syncId").or_insert(json!(uuid_v4()));
        m.insert("organization".into(), organization);
        m.insert("agent".into(), agent);
        if !state.is_null() {
            m.insert("state".into(), state);
        }
        if attributes.is_empty() {
            m.remove("attributes");
        } else {
            m.insert("attributes".into(), json!(attributes));
        }
        let sum = Self::positions_sum(&positions);
        m.insert("sum".into(), json!(sum));
        m.insert("vatSum".into(), json!(0.0));
        m.insert("payedSum".into(), json!(0.0));
        m.insert("shippedSum".into(), json!(0.0));
        m.insert("invoicedSum".into(), json!(0.0));
        m.insert("reservedSum".into(), json!(0.0));
        m.insert(
            "positions".into(),
            self.positions_meta(&id, positions.len()),
        );
        m.insert("created".into(), json!(now));
        m.insert("updated".into(), json!(now));
        m.insert("printed".into(), json!(false));
        m.insert("published".into(), json!(false));
        d.positions.insert(id.clone(), positions);
        let v = Value::Object(m);
        d.orders.push(v.clone());
        Self::record_event(d, "customerorder", &id, "CREATE", Vec::new());
        Ok(v)
    }

    fn record_event(d: &mut Data, entity_type: &str, id: &str, action: &str, fields: Vec<String>) {
        let disabled_prefixes = d.disable_prefixes.clone();
        d.pending.push(PendingEvent {
            entity_type: entity_type.to_owned(),
            id: id.to_owned(),
            action: action.to_owned(),
            updated_fields: fields,
            disabled_prefixes,
        });
    }

    fn create_webhook(&self, d: &mut Data, body: &Value) -> R<Value> {
        let url = body["url"].as_str().unwrap_or_default();
        let entity_type = body["entityType"].as_str().unwrap_or_default();
        let action = body["action"].as_str().unwrap_or_default();
        for (field, v) in [
            ("url", url),
            ("entityType", entity_type),
            ("action", action),
        ] {
            if v.is_empty() {
                return Err(self.error(
                    StatusCode::PRECONDITION_FAILED,
                    3000,
                    &format!("Ошибка сохранения объекта: поле '{field}' не может быть пустым или отсутствовать"),
                    Some(field),
                ));
            }
        }
        if url.len() > 255 || url::Url::parse(url).is_err() {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2016,
                "Некорректный url вебхука",
                Some("url"),
            ));
        }
        if !matches!(action, "CREATE" | "UPDATE" | "DELETE" | "PROCESSED") {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2016,
                "Некорректное значение 'action'",
                Some("action"),
            ));
        }
        if matches!(entity_type, "webhook" | "discount" | "notes") {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                2016,
                "Вебхуки для этого типа недоступны",
                Some("entityType"),
            ));
        }
        let dup = d
            .webhooks
            .iter()
            .any(|w| w["url"] == url && w["entityType"] == entity_type && w["action"] == action);
        if dup {
            return Err(self.error(
                StatusCode::PRECONDITION_FAILED,
                3006,
                "Вебхук с такими entityType, action и url уже существует",
                None,
            ));
        }
        let id = uuid_v4();
        let mut w = json!({
            "meta": self.meta("webhook", &id),
            "id": id,
            "accountId": self.account_id,
            "entityType": entity_type,
            "url": url,
            "method": "POST",
            "enabled": body["enabled"].as_bool().unwrap_or(true),
            "action": action,
        });
        if let Some(diff) = body["diffType"].as_str() {
            w["diffType"] = json!(diff);
        } else if action == "UPDATE" {
            w["diffType"] = json!("NONE");
        }
        d.webhooks.push(w.clone());
        Ok(w)
    }

    fn update_webhook(&self, d: &mut Data, id: &str, body: &Value) -> R<Value> {
        let Some(w) = d.webhooks.iter_mut().find(|w| w["id"] == id) else {
            return Err(self.not_found(id));
        };
        for k in ["url", "enabled", "action", "diffType", "entityType"] {
            if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
                w[k] = v.clone();
            }
        }
        Ok(w.clone())
    }

    /// Positions of one request: at most 1,000; each with an `assortment`
    /// reference, a positive `quantity`, an integer `price` (kopecks) and
    /// an integer `vat` percent when given.
    fn check_positions(&self, positions: &[Value]) -> Result<(), Resp> {
        if positions.len() > 1000 {
            return Err(self.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                1044,
                "В массиве не может быть больше 1000 элементов",
                Some("positions"),
            ));
        }
        for p in positions {
            let kind = p["assortment"]["meta"]["type"].as_str().unwrap_or_default();
            if !matches!(kind, "product" | "service" | "variant" | "bundle")
                || p["assortment"]["meta"]["href"].as_str().is_none()
            {
                return Err(self.error(StatusCode::BAD_REQUEST, 3000, "Ошибка формата: поле 'assortment' должно ссылаться на товар, услугу или модификацию", Some("assortment")));
            }
            if !p["quantity"].as_f64().is_some_and(|q| q > 0.0) {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    3000,
                    "Ошибка формата: поле 'quantity' должно быть положительным числом",
                    Some("quantity"),
                ));
            }
            if !(p["price"].is_null() || p["price"].is_u64()) {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    3000,
                    "Ошибка формата: поле 'price' должно быть целым числом копеек",
                    Some("price"),
                ));
            }
            if !(p["vat"].is_null() || p["vat"].as_u64().is_some_and(|v| v <= 100)) {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    3000,
                    "Ошибка формата: поле 'vat' должно быть целым процентом",
                    Some("vat"),
                ));
            }
        }
        Ok(())
    }

    /// A stored position row (with an id).
    fn position_row(&self, p: &Value) -> Value {
        let mut row = p.clone();
        row["id"] = json!(uuid_v4());
        row
    }

    fn positions_meta(&self, order_id: &str, n: usize) -> Value {
        json!({"meta": {
            "href": format!("{}/entity/customerorder/{order_id}/positions", self.base),
            "type": "customerorderposition",
            "mediaType": "application/json",
            "size": n, "limit": 1000, "offset": 0,
        }})
    }

    fn update_order(&self, d: &mut Data, id: &str, body: &Value) -> R<Value> {
        if !body.is_object() {
            return Err(self.error(StatusCode::BAD_REQUEST, 2000, "Ошибка формата", None));
        }
        let Some(idx) = d.orders.iter().position(|o| o["id"] == id) else {
            return Err(self.not_found(id));
        };
        let existing = d.orders[idx].clone();
        if let (Some(new), Some(old)) = (body["syncId"].as_str(), existing["syncId"].as_str())
            && new != old
        {
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                1047,
                "Поле 'syncId' не может быть изменено",
                Some("syncId"),
            ));
        }
        let mut m = Self::strip_read_only(body);
        let fields: Vec<String> = m.keys().cloned().collect();
        let mut upd = existing.clone();
        if let Some(v) = m.remove("organization") {
            upd["organization"] = self.org_ref(&v)?;
        }
        if let Some(v) = m.remove("agent") {
            upd["agent"] = self.agent_ref(d, &v)?;
        }
        if let Some(v) = m.remove("state") {
            upd["state"] = self.state_ref(d, &v)?;
        }
        if let Some(v) = m.remove("attributes") {
            let old = existing["attributes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let attrs = self.order_attributes(d, &v, &old)?;
            if attrs.is_empty() {
                if let Some(o) = upd.as_object_mut() {
                    o.remove("attributes");
                }
            } else {
                upd["attributes"] = json!(attrs);
            }
        }
        if let Some(v) = m.remove("positions") {
            let positions = v.as_array().cloned().unwrap_or_default();
            upd["sum"] = json!(Self::positions_sum(&positions));
            upd["positions"] = self.positions_meta(id, positions.len());
            d.positions.insert(id.to_owned(), positions);
        }
        for (k, v) in m {
            if v.is_null() {
                if let Some(o) = upd.as_object_mut() {
                    o.remove(&k);
                }
            } else {
                upd[k] = v;
            }
        }
        upd["updated"] = json!(self.now(d));
        d.orders[idx] = upd.clone();
        Self::record_event(d, "customerorder", id, "UPDATE", fields);
        Ok(upd)
    }

    fn expand(&self, d: &Data, mut v: Value, expand: &[String]) -> Value {
        for field in expand {
            let field = field.split('.').next().unwrap_or_default();
            let Some(href) = v[field]["meta"]["href"].as_str().map(str::to_owned) else {
                continue;
            };
            let id = href.rsplit('/').next().unwrap_or_default();
            let full = match field {
                "agent" if href.contains("/counterparty/") => {
                    d.counterparties.iter().find(|c| c["id"] == id).cloned()
                }
                "agent" | "organization" if id == self.org_id => Some(self.organization_json(d)),
                "state" => d
                    .states
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| self.state_json(s)),
                _ => None,
            };
            if let Some(full) = full {
                v[field] = full;
            }
        }
        v
    }

    fn auth_ok(&self, req: &Req) -> bool {
        let Some(auth) = req.header("authorization") else {
            return false;
        };
        if let Some(tok) = auth.strip_prefix("Bearer ") {
            return !self.config.token.is_empty() && tok.trim() == self.config.token;
        }
        if let (Some(b64), Some((login, pw))) = (auth.strip_prefix("Basic "), &self.config.basic) {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                return false;
            };
            return String::from_utf8_lossy(&raw) == format!("{login}:{pw}");
        }
        false
    }

    fn auth_error(&self) -> Resp {
        let msg =
            "Ошибка аутентификации: Неправильный пароль или имя пользователя или ключ авторизации";
        self.error(StatusCode::UNAUTHORIZED, 1056, msg, None)
            .with_header("x-lognex-auth", "-1056")
            .with_header("x-lognex-auth-message", "Authentication failed")
    }

    /// Strict-mode rate limiting; `Err` is the 429, `Ok` the headers to add.
    fn rate_check(&self, req: &Req) -> R<Vec<(&'static str, String)>> {
        let mut d = lock(&self.data);
        let Some(limit) = d.rate_limit.clone() else {
            return Ok(Vec::new());
        };
        if req.in_flight > limit.max_parallel {
            d.rate_limited += 1;
            return Err(self.error(
                StatusCode::TOO_MANY_REQUESTS,
                1073,
                "Превышено ограничение на количество параллельных запросов",
                None,
            ));
        }
        let now = Instant::now();
        let start = match d.window_start {
            Some(s) if now.duration_since(s) < limit.window => s,
            _ => {
                d.window_start = Some(now);
                d.window_count = 0;
                now
            }
        };
        d.window_count += 1;
        let reset_ms = limit
            .window
            .saturating_sub(now.duration_since(start))
            .as_millis()
            .to_string();
        let window_ms = limit.window.as_millis().to_string();
        if d.window_count > limit.requests {
            d.rate_limited += 1;
            return Err(self
                .error(
                    StatusCode::TOO_MANY_REQUESTS,
                    1049,
                    "Превышено ограничение на количество запросов в единицу времени",
                    None,
                )
                .with_header("x-ratelimit-limit", &limit.requests.to_string())
                .with_header("x-ratelimit-remaining", "0")
                .with_header("x-lognex-retry-timeinterval", &window_ms)
                .with_header("x-lognex-reset", &reset_ms)
                .with_header("x-lognex-retry-after", &reset_ms));
        }
        Ok(vec![
            ("x-ratelimit-limit", limit.requests.to_string()),
            (
                "x-ratelimit-remaining",
                (limit.requests - d.window_count).to_string(),
            ),
            ("x-lognex-retry-timeinterval", window_ms),
            ("x-lognex-reset", "0".to_owned()),
        ])
    }

    fn handle(&self, req: &Req) -> Resp {
        if !accepts_gzip(req) {
            return Resp::new(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        let Some(segs) = req.segments_after(API_PREFIX) else {
            return self.error(StatusCode::NOT_FOUND, 1005, "Неизвестный путь", None);
        };
        let is_token = segs.len() == 2 && segs[0] == "security" && segs[1] == "token";
        if is_token {
            if self.config.basic.is_some() && req.method == Method::POST && self.auth_ok(req) {
                return Resp::json(StatusCode::OK, &json!({"access_token": self.config.token}));
            }
            return self.auth_error();
        }
        if !self.auth_ok(req) {
            return self.auth_error();
        }
        let extra = match self.rate_check(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Some(accept) = req.header("accept") {
            let a = accept.to_ascii_lowercase();
            if !(a.contains("application/json") || a.contains("*/*")) {
                return self.error(
                    StatusCode::NOT_ACCEPTABLE,
                    1062,
                    "Неверное значение заголовка 'Accept'",
                    None,
                );
            }
        }
        let body = if matches!(req.method, Method::POST | Method::PUT) {
            let ct = req.header("content-type").unwrap_or_default();
            if !ct.to_ascii_lowercase().starts_with("application/json") {
                return self.error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    1037,
                    "Неверный Content-Type: ожидается application/json",
                    None,
                );
            }
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(v) => v,
                Err(e) => {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        2000,
                        &format!("Ошибка формата JSON: {e}"),
                        None,
                    );
                }
            }
        } else {
            Value::Null
        };
        let mut resp = self.route(req, &segs, &body);
        for (k, v) in extra {
            resp = resp.with_header(k, &v);
        }
        resp
    }

    fn route(&self, req: &Req, segs: &[String], body: &Value) -> Resp {
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = &req.method;
        let mut d = lock(&self.data);
        d.disable_prefixes = req
            .headers
            .get_all("x-lognex-webhook-disablebyprefix")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let result: R<Resp> = match (m, s.as_slice()) {
            (&Method::GET, ["entity", "organization"]) => {
                let rows = vec![self.organization_json(&d)];
                self.list(req, &d, "organization", rows, &[])
            }
            (&Method::GET, ["entity", "organization", id]) if *id == self.org_id => {
                Ok(Resp::json(StatusCode::OK, &self.organization_json(&d)))
            }
            (&Method::GET, ["entity", "counterparty", "metadata"]) => Ok(Resp::json(
                StatusCode::OK,
                &json!({
                    "meta": {"href": format!("{}/entity/counterparty/metadata", self.base), "mediaType": "application/json"},
                    "attributes": [], "states": [], "createShared": false,
                }),
            )),
            (&Method::GET, ["entity", "counterparty"]) => {
                let rows = d.counterparties.clone();
                self.list(req, &d, "counterparty", rows, COUNTERPARTY_FIELDS)
            }
            (&Method::POST, ["entity", "counterparty"]) => {
                self.create_many(&mut d, body, Self::create_counterparty)
            }
            (&Method::GET, ["entity", "counterparty", id]) => d
                .counterparties
                .iter()
                .find(|c| c["id"] == *id)
                .map(|c| Resp::json(StatusCode::OK, c))
                .ok_or_else(|| self.not_found(id)),
            (&Method::PUT, ["entity", "counterparty", id]) => self
                .update_counterparty(&mut d, id, body)
                .map(|v| Resp::json(StatusCode::OK, &v)),
            (&Method::DELETE, ["entity", "counterparty", id]) => {
                let before = d.counterparties.len();
                d.counterparties.retain(|c| c["id"] != *id);
                if d.counterparties.len() == before {
                    Err(self.not_found(id))
                } else {
                    Self::record_event(&mut d, "counterparty", id, "DELETE", Vec::new());
                    Ok(Resp::new(StatusCode::OK))
                }
            }
            (&Method::GET, ["entity", "customerorder", "metadata"]) => Ok(Resp::json(
                StatusCode::OK,
                &json!({
                    "meta": {"href": format!("{}/entity/customerorder/metadata", self.base), "mediaType": "application/json"},
                    "attributes": d.attributes.iter().map(|a| self.attr_json(a)).collect::<Vec<_>>(),
                    "states": d.states.iter().map(|s| self.state_json(s)).collect::<Vec<_>>(),
                    "createShared": false,
                }),
            )),
            (&Method::GET, ["entity", "customerorder", "metadata", "attributes"]) => {
                let rows = d.attributes.iter().map(|a| self.attr_json(a)).collect();
                self.list(req, &d, "attributemetadata", rows, &[])
            }
            (&Method::GET, ["entity", "customerorder", "metadata", "attributes", id]) => d
                .attributes
                .iter()
                .find(|a| a.id == *id)
                .map(|a| Resp::json(StatusCode::OK, &self.attr_json(a)))
                .ok_or_else(|| self.not_found(id)),
            (&Method::GET, ["entity", "customerorder", "metadata", "states", id]) => d
                .states
                .iter()
                .find(|a| a.id == *id)
                .map(|a| Resp::json(StatusCode::OK, &self.state_json(a)))
                .ok_or_else(|| self.not_found(id)),
            (&Method::GET, ["entity", "customerorder"]) => {
                let rows = d.orders.clone();
                self.list(req, &d, "customerorder", rows, ORDER_FIELDS)
            }
            (&Method::POST, ["entity", "customerorder"]) => {
                self.create_many(&mut d, body, Self::create_order)
            }
            (&Method::GET, ["entity", "customerorder", id]) => {
                let expand = expand_param(req);
                d.orders
                    .iter()
                    .find(|c| c["id"] == *id)
                    .map(|c| Resp::json(StatusCode::OK, &self.expand(&d, c.clone(), &expand)))
                    .ok_or_else(|| self.not_found(id))
            }
            (&Method::PUT, ["entity", "customerorder", id]) => self
                .update_order(&mut d, id, body)
                .map(|v| Resp::json(StatusCode::OK, &v)),
            (&Method::DELETE, ["entity", "customerorder", id]) => {
                let before = d.orders.len();
                d.orders.retain(|c| c["id"] != *id);
                if d.orders.len() == before {
                    Err(self.not_found(id))
                } else {
                    Self::record_event(&mut d, "customerorder", id, "DELETE", Vec::new());
                    Ok(Resp::new(StatusCode::OK))
                }
            }
            (&Method::GET, ["entity", "webhook"]) => {
                let rows = d.webhooks.clone();
                self.list(req, &d, "webhook", rows, &[])
            }
            (&Method::POST, ["entity", "webhook"]) => {
                self.create_many(&mut d, body, Self::create_webhook)
            }
            (&Method::GET, ["entity", "webhook", id]) => d
                .webhooks
                .iter()
                .find(|w| w["id"] == *id)
                .map(|w| Resp::json(StatusCode::OK, w))
                .ok_or_else(|| self.not_found(id)),
            (&Method::PUT, ["entity", "webhook", id]) => self
                .update_webhook(&mut d, id, body)
                .map(|v| Resp::json(StatusCode::OK, &v)),
            (&Method::DELETE, ["entity", "webhook", id]) => {
                let before = d.webhooks.len();
                d.webhooks.retain(|w| w["id"] != *id);
                if d.webhooks.len() == before {
                    Err(self.not_found(id))
                } else {
                    Ok(Resp::new(StatusCode::OK))
                }
            }
            (&Method::POST, ["entity", "customerorder", id, "positions"]) => {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let added: Vec<Value> = match &body {
                    Value::Array(items) => items.clone(),
                    Value::Object(_) => vec![body.clone()],
                    _ => {
                        return self.error(
                            StatusCode::BAD_REQUEST,
                            2000,
                            "Ошибка формата: ожидается массив позиций",
                            None,
                        );
                    }
                };
                match self.check_positions(&added) {
                    Err(r) => Err(r),
                    Ok(()) => match d.positions.contains_key(*id) {
                        false => Err(self.not_found(id)),
                        true => {
                            let rows: Vec<Value> =
                                added.iter().map(|p| self.position_row(p)).collect();
                            let list = d.positions.entry((*id).to_owned()).or_default();
                            list.extend(rows.iter().cloned());
                            let (n, sum) = (list.len(), Self::positions_sum(list));
                            if let Some(order) = d.orders.iter_mut().find(|o| o["id"] == *id) {
                                order["positions"] = self.positions_meta(id, n);
                                order["sum"] = json!(sum);
                            }
                            Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
                        }
                    },
                }
            }
            (&Method::GET, ["entity", "customerorder", id, "positions"]) => {
                match d.positions.get(*id).cloned() {
                    Some(rows) => self.list(req, &d, "customerorderposition", rows, &[]),
                    None => Err(self.not_found(id)),
                }
            }
            (_, ["entity", kind, ..])
                if matches!(
                    *kind,
                    "counterparty" | "customerorder" | "organization" | "webhook"
                ) =>
            {
                Err(self.error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    1001,
                    "Метод не поддерживается",
                    None,
                ))
            }
            _ => Err(self.error(
                StatusCode::NOT_FOUND,
                1005,
                &format!("Неизвестный путь '{}'", req.path),
                None,
            )),
        };
        match result {
            Ok(r) | Err(r) => r,
        }
    }

    fn create_many(
        &self,
        d: &mut Data,
        body: &Value,
        create: fn(&Self, &mut Data, &Value) -> R<Value>,
    ) -> R<Resp> {
        match body {
            Value::Array(items) => {
                if items.len() > 1000 {
                    return Err(self.error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        1044,
                        "В массиве не может быть больше 1000 элементов",
                        None,
                    ));
                }
                let out: Vec<Value> = items
                    .iter()
                    .map(|item| match create(self, d, item) {
                        Ok(v) => v,
                        Err(r) => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                    })
                    .collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(out)))
            }
            _ => create(self, d, body).map(|v| Resp::json(StatusCode::OK, &v)),
        }
    }

    fn list(&self, req: &Req, d: &Data, kind: &str, rows: Vec<Value>, fields: &[&str]) -> R<Resp> {
        let limit = match req.query_param("limit") {
            None => 1000,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(self.error(
                        StatusCode::BAD_REQUEST,
                        1011,
                        "Параметр 'limit' должен быть числом от 1 до 1000",
                        Some("limit"),
                    ));
                }
            },
        };
        let offset = match req.query_param("offset") {
            None => 0,
            Some(o) => o.parse::<usize>().map_err(|_| {
                self.error(
                    StatusCode::BAD_REQUEST,
                    1011,
                    "Параметр 'offset' должен быть неотрицательным числом",
                    Some("offset"),
                )
            })?,
        };
        let mut rows = rows;
        if let Some(f) = req.query_param("filter") {
            let conds = self.parse_filter(&f, fields)?;
            rows.retain(|r| self.matches(d, r, &conds));
        }
        if let Some(s) = req.query_param("search") {
            let needle = s.to_lowercase();
            rows.retain(|r| {
                [
                    "name",
                    "code",
                    "legalTitle",
                    "email",
                    "phone",
                    "description",
                    "externalCode",
                ]
                .iter()
                .any(|f| {
                    r[*f]
                        .as_str()
                        .is_some_and(|v| v.to_lowercase().contains(&needle))
                })
            });
        }
        if let Some(o) = req.query_param("order") {
            let keys: Vec<(String, bool)> = o
                .split(';')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let mut it = p.split(',');
                    let f = it.next().unwrap_or_default().trim().to_owned();
                    let desc = it.next().is_some_and(|d| d.trim() == "desc");
                    (f, desc)
                })
                .collect();
            rows.sort_by(|a, b| {
                for (f, desc) in &keys {
                    let va = self.field_value(d, a, f);
                    let vb = self.field_value(d, b, f);
                    let ord = compare_values(va.as_deref(), vb.as_deref());
                    let ord = if *desc { ord.reverse() } else { ord };
                    if ord != std::cmp::Ordering::Equal {
                        return ord;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        let size = rows.len();
        let expand = if limit <= 100 {
            expand_param(req)
        } else {
            Vec::new()
        };
        let page: Vec<Value> = rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|r| self.expand(d, r, &expand))
            .collect();
        let href_base = format!("{}{}", self.origin, req.path);
        let with_offset = |off: usize| {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            let mut seen_offset = false;
            let mut seen_limit = false;
            for (k, v) in req.query_pairs() {
                if k == "offset" {
                    seen_offset = true;
                    ser.append_pair("offset", &off.to_string());
                } else {
                    seen_limit |= k == "limit";
                    ser.append_pair(&k, &v);
                }
            }
            if !seen_limit {
                ser.append_pair("limit", &limit.to_string());
            }
            if !seen_offset {
                ser.append_pair("offset", &off.to_string());
            }
            format!("{href_base}?{}", ser.finish())
        };
        let mut meta = json!({
            "href": if req.query.is_empty() { href_base.clone() } else { format!("{href_base}?{}", req.query) },
            "type": kind,
            "mediaType": "application/json",
            "size": size,
            "limit": limit,
            "offset": offset,
        });
        if offset + limit < size {
            meta["nextHref"] = json!(with_offset(offset + limit));
        }
        if offset > 0 {
            meta["previousHref"] = json!(with_offset(offset.saturating_sub(limit)));
        }
        Ok(Resp::json(
            StatusCode::OK,
            &json!({
                "context": {"employee": {"meta": {
                    "href": format!("{}/context/employee", self.base),
                    "metadataHref": format!("{}/entity/employee/metadata", self.base),
                    "type": "employee", "mediaType": "application/json",
                }}},
                "meta": meta,
                "rows": page,
            }),
        ))
    }

    fn parse_filter(&self, raw: &str, fields: &[&str]) -> R<Vec<Cond>> {
        let mut conds = Vec::new();
        for part in split_unescaped(raw) {
            if part.is_empty() {
                continue;
            }
            let Some(pos) = part.find(['=', '<', '>', '!', '~']) else {
                return Err(self.bad_filter(&part));
            };
            let (field, rest) = part.split_at(pos);
            let op = ["<=", ">=", "!=", "~=", "=~", "=", "<", ">", "~"]
                .into_iter()
                .find(|op| rest.starts_with(op))
                .ok_or_else(|| self.bad_filter(&part))?;
            let value = rest[op.len()..].to_owned();
            let field = field.trim().to_owned();
            let known = fields.contains(&field.as_str())
                || field.starts_with(&format!(
                    "{}/entity/customerorder/metadata/attributes/",
                    self.base
                )) && fields == ORDER_FIELDS;
            if !known {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    1002,
                    &format!("Неизвестное поле фильтрации '{field}'"),
                    Some("filter"),
                ));
            }
            if DATE_FIELDS.contains(&field.as_str())
                && !value.is_empty()
                && parse_naive(&value).is_none()
            {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    1002,
                    &format!(
                        "Неверный формат даты в фильтре '{part}': ожидается YYYY-MM-DD HH:MM:SS"
                    ),
                    Some("filter"),
                ));
            }
            conds.push(Cond { field, op, value });
        }
        // Mixing `=` with an inequality on one field is an error.
        for c in &conds {
            if c.op == "="
                && conds
                    .iter()
                    .any(|o| o.field == c.field && matches!(o.op, "<" | ">" | "<=" | ">=" | "!="))
            {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    1002,
                    &format!("Нельзя совмещать '=' и неравенство для поля '{}'", c.field),
                    Some("filter"),
                ));
            }
        }
        Ok(conds)
    }

    fn bad_filter(&self, part: &str) -> Resp {
        self.error(
            StatusCode::BAD_REQUEST,
            1002,
            &format!("Неверное условие фильтрации '{part}'"),
            Some("filter"),
        )
    }

    fn field_value(&self, d: &Data, row: &Value, field: &str) -> Option<String> {
        if field == "state.name" {
            return self.state_name_of(d, row);
        }
        if field.starts_with("http") {
            let id = field.rsplit('/').next()?;
            let attr = row["attributes"]
                .as_array()?
                .iter()
                .find(|a| a["id"] == id)?;
            return scalar(&attr["value"]);
        }
        let v = &row[field];
        if let Some(href) = v["meta"]["href"].as_str() {
            return Some(href.to_owned());
        }
        scalar(v)
    }

    fn matches(&self, d: &Data, row: &Value, conds: &[Cond]) -> bool {
        let mut eq_groups: HashMap<&str, bool> = HashMap::new();
        for c in conds {
            let actual = self.field_value(d, row, &c.field);
            let ok = eval(&c.field, c.op, actual.as_deref(), &c.value);
            if c.op == "=" {
                *eq_groups.entry(c.field.as_str()).or_insert(false) |= ok;
            } else if !ok {
                return false;
            }
        }
        eq_groups.values().all(|v| *v)
    }
}

const COUNTERPARTY_FIELDS: &[&str] = &[
    "id",
    "name",
    "code",
    "externalCode",
    "description",
    "email",
    "phone",
    "fax",
    "inn",
    "kpp",
    "ogrn",
    "legalTitle",
    "companyType",
    "actualAddress",
    "legalAddress",
    "archived",
    "syncId",
    "created",
    "updated",
    "owner",
    "group",
    "state",
];

const ORDER_FIELDS: &[&str] = &[
    "id",
    "name",
    "code",
    "externalCode",
    "description",
    "moment",
    "created",
    "updated",
    "deliveryPlannedMoment",
    "syncId",
    "state",
    "state.name",
    "agent",
    "organization",
    "owner",
    "group",
    "project",
    "store",
    "contract",
    "salesChannel",
    "sum",
    "payedSum",
    "shippedSum",
    "applicable",
    "deleted",
];

const DATE_FIELDS: &[&str] = &["updated", "created", "moment", "deliveryPlannedMoment"];

#[derive(Debug)]
struct Cond {
    field: String,
    op: &'static str,
    value: String,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn split_unescaped(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&';') => {
                cur.push(';');
                chars.next();
            }
            ';' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn compare_values(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => {
            if let (Some(x), Some(y)) = (parse_naive(a), parse_naive(b)) {
                return x.cmp(&y);
            }
            if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
                return x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            }
            a.cmp(b)
        }
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

fn eval(field: &str, op: &str, actual: Option<&str>, expected: &str) -> bool {
    let lower = |s: &str| s.to_lowercase();
    match op {
        "=" if expected.is_empty() => actual.is_none_or(str::is_empty),
        "=" => actual.is_some_and(|a| {
            if DATE_FIELDS.contains(&field) {
                parse_naive(a).is_some() && parse_naive(a) == parse_naive(expected)
            } else {
                a == expected
            }
        }),
        "!=" if expected.is_empty() => actual.is_some_and(|a| !a.is_empty()),
        "!=" => actual != Some(expected),
        "~" => actual.is_some_and(|a| lower(a).contains(&lower(expected))),
        "~=" => actual.is_some_and(|a| lower(a).starts_with(&lower(expected))),
        "=~" => actual.is_some_and(|a| lower(a).ends_with(&lower(expected))),
        _ => {
            let ord = compare_values(actual, Some(expected));
            actual.is_some()
                && match op {
                    "<" => ord.is_lt(),
                    ">" => ord.is_gt(),
                    "<=" => ord.is_le(),
                    ">=" => ord.is_ge(),
                    _ => false,
                }
        }
    }
}

fn expand_param(req: &Req) -> Vec<String> {
    req.query_param("expand")
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl Vendor for MsVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, req: &Req) -> Resp {
        let inner = &self.0;
        let resp = match fault {
            Fault::TooManyRequests => {
                let after = lock(&inner.data).retry_after.as_millis().to_string();
                inner
                    .error(
                        StatusCode::TOO_MANY_REQUESTS,
                        1049,
                        "Превышено ограничение на количество запросов в единицу времени",
                        None,
                    )
                    .with_header("x-lognex-retry-after", &after)
                    .with_header("x-lognex-reset", &after)
                    .with_header("x-lognex-retry-timeinterval", "3000")
                    .with_header("x-ratelimit-limit", "45")
                    .with_header("x-ratelimit-remaining", "0")
            }
            _ => Resp::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"errors": [{"error": "Внутренняя ошибка сервера. Повторите запрос позже"}]}),
            ),
        };
        finish(resp, req)
    }

    fn handle(&self, req: &Req) -> Resp {
        let resp = self.0.handle(req);
        finish(resp, req)
    }
}
