//! Fake Verbox (verbox.ru, an online-consultant widget by Sofit): the two
//! REST methods crmbridge calls, and a sender of visitor events.
//!
//! **Our contract, not Verbox's.** Verbox's server API is only partly
//! documented: the API research, section D, found the REST layout
//! (`POST https://admin.verbox.ru/json/v1.0/<method>`, header `X-Token`,
//! envelope `{"success":true,"result":…}` / `{"success":false,"error":{"code","descr"}}`)
//! in the vendor's own SDKs; `chat/message/sendToClient` and
//! `chat/operator/…` only in integrators' code for the sibling Talk-Me
//! host; and no server-side event delivery at all. The event format below
//! is the one the design page (`docs/integrations/verbox-planfix.md`, "Open
//! questions") names as crmbridge's contract, after the widget's JS events.
//! A test that passes here passes against that contract.
//!
//! The contract, as served ([`FakeVerbox::base_url`] is
//! `http://127.0.0.1:PORT`, standing for `https://admin.verbox.ru`):
//! * every call `POST /json/v1.0/<method>` with `X-Token: <token>`; a
//!   missing or wrong token → HTTP 401
//!   `{"success":false,"error":{"code":401,"descr":"Invalid token"}}`; a
//!   body that is not a JSON object → 400; an unknown method or another
//!   HTTP method → 404 `{"success":false,"error":{"code":404,"descr":"method not found"}}`.
//!   The log redacts `x-token` and `x-verbox-token`.
//! * `chat/message/sendToClient`
//!   `{"client":{"id":"<clientId>"},"operator":{"login"}?,"message":{"text","attachments":[{"name","url"}]?},"dialog":{"id"}?}`
//!   → 200 `{"success":true,"result":{"id":"<message id>"}}` (ids are
//!   numeric strings, increasing). 400 `{"success":false,"error":{"code":400,"descr":…}}`,
//!   `descr` naming the field: `client.id` missing or not a string /
//!   integer; `message.text` missing or empty with no attachments;
//!   `message.attachments` not a list of `{name, url}`; `operator.login` not
//!   one of the operators ([`FakeVerbox::add_operator`]). 404 `client not
//!   found`: a client neither added ([`FakeVerbox::add_client`]) nor named
//!   by an event the fake sent. Checked in that order: token, body,
//!   fields, operator, client. [`FakeVerbox::sent_to_client`] lists the
//!   bodies received.
//! * `chat/operator/getList` → `{"success":true,"result":[{"login","name","email"}]}`.
//! * `chat/message/getList` `{"client":{"clientId"},"sender":"operator"?,"dateRange":{"start","stop","isLocal"}?}`
//!   → `{"success":true,"result":[{"clientId","messages":[{"id","whoSend":"operator","text","dateTimeUTC","isVisibleForClient"}]}]}`:
//!   the messages `sendToClient` took for that client, within the range
//!   (UTC, whole seconds, inclusive); `sender` `client` lists none.
//! * events (Verbox → crmbridge): [`FakeVerbox::send_event`] POSTs a JSON
//!   body with `Content-Type: application/json` and `X-Verbox-Token:
//!   <token>` (the REST token given to [`FakeVerbox::start`]; another or
//!   none with [`FakeVerbox::send_event_with_token`]), shaped
//!   `{"event","client":{"clientId","name","phone","email"},"message":{"id","text","dateTimeUTC","attachments"},"operator":{"login"},"dialog":{"id"},"rate":{"score","comment"}}`,
//!   with only the fields an event needs (the builders:
//!   [`FakeVerbox::client_message`] `clientSendMessage`,
//!   [`FakeVerbox::operator_message`] `operatorSendMessage`,
//!   [`FakeVerbox::contacts_updated`] `contactsUpdated`,
//!   [`FakeVerbox::contact_form`] `clientMakeSubscribe`,
//!   [`FakeVerbox::rating`] `sendRate`, [`FakeVerbox::chat_closed`]
//!   `chatClosed`). Sending an event registers its `client.clientId` as
//!   a known client before the request goes out.
//! * faults: `ServerError` → 500 `{"success":false,"error":{"code":500,…}}`,
//!   `TooManyRequests` → 429 `{"success":false,"error":{"code":429,…}}`
//!   with `Retry-After: 1`.
//!
//! The fake's choices (nothing to follow): the statuses (the sibling
//! platform's callers only read `success`); the field-naming `descr`
//! texts; a client id given as an integer [accepted, compared as text];
//! every event registering its client, not just a visitor message; the
//! time format of `dateTimeUTC` [`YYYY-MM-DD HH:MM:SS`, UTC, as the
//! widget's message lists show]; `message.id` on a contact form [none];
//! the event sender's timeout [[`EVENT_TIMEOUT`]]. Not served: the other
//! REST methods (`chat/client/setInfo`, …), rate
//! limits, the legacy `/api/chat/<token>/<method>` form.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Timelike, Utc};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The REST prefix.
pub const API_PREFIX: &str = "/json/v1.0";
/// How long [`FakeVerbox::send_event`] waits for the receiver.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

const FIRST_MESSAGE_ID: u64 = 700_001;

#[derive(Debug, Clone)]
struct Operator {
    login: String,
    name: String,
    email: String,
}

impl Operator {
    fn json(&self) -> Value {
        json!({"login": self.login, "name": self.name, "email": self.email})
    }
}

#[derive(Debug)]
struct Data {
    clients: Vec<String>,
    operators: Vec<Operator>,
    /// (client id, body as received, message id, when).
    sent: Vec<(String, Value, String, chrono::DateTime<Utc>)>,
    next_message: u64,
}

struct Inner {
    token: String,
    data: Mutex<Data>,
}

/// A running fake Verbox account. Dropping it stops the server.
pub struct FakeVerbox {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeVerbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVerbox")
            .field("addr", &self.server.addr)
            .finish()
    }
}

fn vb_err(status: StatusCode, descr: &str) -> Resp {
    Resp::json(
        status,
        &json!({"success": false, "error": {"code": status.as_u16(), "descr": descr}}),
    )
}

fn bad(descr: &str) -> Resp {
    vb_err(StatusCode::BAD_REQUEST, descr)
}

fn now_utc() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

impl FakeVerbox {
    /// Starts a fake account whose REST token (`X-Token`) is `token`; no
    /// operators, no clients.
    pub async fn start(token: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                token: token.to_owned(),
                data: Mutex::new(Data {
                    clients: Vec::new(),
                    operators: Vec::new(),
                    sent: Vec::new(),
                    next_message: FIRST_MESSAGE_ID,
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(VbVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeVerbox { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — stands for `https://admin.verbox.ru`; the
    /// methods are under [`API_PREFIX`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The REST token accepted (also sent as `X-Verbox-Token` with events).
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// Makes a visitor known (as if they had opened the widget).
    pub fn add_client(&self, client_id: &str) {
        let mut d = lock(&self.inner.data);
        if !d.clients.iter().any(|c| c == client_id) {
            d.clients.push(client_id.to_owned());
        }
    }

    /// Whether a visitor is known.
    pub fn has_client(&self, client_id: &str) -> bool {
        lock(&self.inner.data)
            .clients
            .iter()
            .any(|c| c == client_id)
    }

    /// Adds an operator named after the login, e-mail `<login>@operators.verbox.example`.
    pub fn add_operator(&self, login: &str) {
        self.add_operator_with(login, login, &format!("{login}@operators.verbox.example"));
    }

    /// Adds an operator (or replaces the one with this login).
    pub fn add_operator_with(&self, login: &str, name: &str, email: &str) {
        let mut d = lock(&self.inner.data);
        d.operators.retain(|o| o.login != login);
        d.operators.push(Operator {
            login: login.to_owned(),
            name: name.to_owned(),
            email: email.to_owned(),
        });
    }

    /// The operators as `chat/operator/getList` answers them.
    pub fn operators(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .operators
            .iter()
            .map(Operator::json)
            .collect()
    }

    /// The `sendToClient` bodies accepted for this visitor, as received, in
    /// arrival order.
    pub fn sent_to_client(&self, client_id: &str) -> Vec<Value> {
        lock(&self.inner.data)
            .sent
            .iter()
            .filter(|(c, ..)| c == client_id)
            .map(|(_, body, ..)| body.clone())
            .collect()
    }

    /// The message ids answered to `sendToClient` for this visitor, in order.
    pub fn sent_message_ids(&self, client_id: &str) -> Vec<String> {
        lock(&self.inner.data)
            .sent
            .iter()
            .filter(|(c, ..)| c == client_id)
            .map(|(_, _, id, _)| id.clone())
            .collect()
    }

    /// Sends an event to `url` with `X-Verbox-Token: <token>`; registers
    /// its `client.clientId` first. Returns the receiver's status and its
    /// answer (`Null` when not JSON).
    pub async fn send_event(&self, url: &str, body: Value) -> Result<(u16, Value), FakeError> {
        let token = self.inner.token.clone();
        self.send_event_with_token(url, body, Some(&token)).await
    }

    /// [`FakeVerbox::send_event`] with another `X-Verbox-Token`, or none.
    pub async fn send_event_with_token(
        &self,
        url: &str,
        body: Value,
        token: Option<&str>,
    ) -> Result<(u16, Value), FakeError> {
        if let Some(id) = body
            .get("client")
            .and_then(|c| c.get("clientId"))
            .and_then(client_id_text)
        {
            self.add_client(&id);
        }
        let client = reqwest::Client::builder().timeout(EVENT_TIMEOUT).build()?;
        let mut rb = client
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default());
        if let Some(t) = token {
            rb = rb.header("x-verbox-token", t);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `clientSendMessage`: a visitor wrote `text`.
    pub fn client_message(client_id: &str, message_id: &str, text: &str) -> Value {
        json!({
            "event": "clientSendMessage",
            "client": {"clientId": client_id},
            "message": {"id": message_id, "text": text, "dateTimeUTC": now_utc(), "attachments": []},
        })
    }

    /// `operatorSendMessage`: an operator wrote `text` in Verbox itself.
    pub fn operator_message(
        client_id: &str,
        message_id: &str,
        text: &str,
        operator_login: &str,
    ) -> Value {
        json!({
            "event": "operatorSendMessage",
            "client": {"clientId": client_id},
            "operator": {"login": operator_login},
            "message": {"id": message_id, "text": text, "dateTimeUTC": now_utc(), "attachments": []},
        })
    }

    /// `contactsUpdated`: the visitor changed their contact data.
    pub fn contacts_updated(client_id: &str, name: &str, phone: &str, email: &str) -> Value {
        json!({
            "event": "contactsUpdated",
            "client": {"clientId": client_id, "name": name, "phone": phone, "email": email},
        })
    }

    /// `clientMakeSubscribe`: the visitor sent the contact (offline) form.
    pub fn contact_form(
        client_id: &str,
        name: &str,
        phone: &str,
        email: &str,
        text: &str,
    ) -> Value {
        json!({
            "event": "clientMakeSubscribe",
            "client": {"clientId": client_id, "name": name, "phone": phone, "email": email},
            "message": {"text": text, "dateTimeUTC": now_utc(), "attachments": []},
        })
    }

    /// `sendRate`: the visitor rated a dialog.
    pub fn rating(client_id: &str, dialog_id: &str, score: i64, comment: &str) -> Value {
        json!({
            "event": "sendRate",
            "client": {"clientId": client_id},
            "dialog": {"id": dialog_id},
            "rate": {"score": score, "comment": comment},
        })
    }

    /// `chatClosed` (ours, no widget event): a dialog ended.
    pub fn chat_closed(client_id: &str, dialog_id: &str) -> Value {
        json!({
            "event": "chatClosed",
            "client": {"clientId": client_id},
            "dialog": {"id": dialog_id},
        })
    }
}

/// A client id given as a non-empty string or an integer, as text.
fn client_id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

struct VbVendor(Arc<Inner>);

impl Inner {
    fn route(&self, req: &Req) -> Resp {
        let not_found = || vb_err(StatusCode::NOT_FOUND, "method not found");
        let Some(segs) = req.segments_after(API_PREFIX) else {
            return not_found();
        };
        if self.token.is_empty()
            || req.header("x-token").map(str::trim) != Some(self.token.as_str())
        {
            return vb_err(StatusCode::UNAUTHORIZED, "Invalid token");
        }
        if req.method != Method::POST {
            return not_found();
        }
        let method = segs.join("/");
        let body = if req.body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(m)) => m,
                _ => return bad("the body is not a JSON object"),
            }
        };
        match method.as_str() {
            "chat/message/sendToClient" => self.send_to_client(&body),
            "chat/message/getList" => self.message_list(&body),
            "chat/operator/getList" => {
                let d = lock(&self.data);
                Resp::json(
                    StatusCode::OK,
                    &json!({"success": true, "result": d.operators.iter().map(Operator::json).collect::<Vec<_>>()}),
                )
            }
            _ => not_found(),
        }
    }

    /// The operator messages sent to one client (`client.clientId`,
    /// required), within `dateRange` (`start`/`stop`, UTC, inclusive) when
    /// given; `sender` `client` lists nothing (visitors' messages are
    /// events the fake sends, not kept).
    fn message_list(&self, body: &Map<String, Value>) -> Resp {
        let Some(client_id) = body
            .get("client")
            .and_then(|c| c.get("clientId"))
            .and_then(client_id_text)
        else {
            return bad("client.clientId is required");
        };
        let bound = |name: &str| -> Result<Option<chrono::NaiveDateTime>, Resp> {
            match body.get("dateRange").and_then(|r| r.get(name)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => {
                    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                        .or_else(|_| {
                            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
                        })
                        .map(Some)
                        .map_err(|_| bad(&format!("dateRange.{name}: not YYYY-MM-DD[ HH:MM:SS]")))
                }
                Some(_) => Err(bad(&format!("dateRange.{name} must be a string"))),
            }
        };
        let (start, stop) = match (bound("start"), bound("stop")) {
            (Ok(start), Ok(stop)) => (start, stop),
            (Err(resp), _) | (_, Err(resp)) => return resp,
        };
        let operators_only = match body.get("sender").and_then(Value::as_str) {
            None | Some("operator") => true,
            Some("client") => false,
            Some(_) => return bad("sender must be operator or client"),
        };
        let d = lock(&self.data);
        let messages: Vec<Value> = d
            .sent
            .iter()
            .filter(|(client, ..)| operators_only && *client == client_id)
            .filter(|(.., at)| {
                // Whole seconds, as the list shows them.
                let at = at.naive_utc().with_nanosecond(0).unwrap_or_default();
                start.is_none_or(|s| at >= s) && stop.is_none_or(|s| at <= s)
            })
            .map(|(_, body, id, at)| {
                json!({
                    "id": id,
                    "whoSend": "operator",
                    "text": body["message"]["text"],
                    "dateTimeUTC": at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    "isVisibleForClient": true,
                })
            })
            .collect();
        Resp::json(
            StatusCode::OK,
            &json!({"success": true, "result": [{"clientId": client_id, "messages": messages}]}),
        )
    }

    fn send_to_client(&self, body: &Map<String, Value>) -> Resp {
        let Some(client_id) = body
            .get("client")
            .and_then(|c| c.get("id"))
            .and_then(client_id_text)
        else {
            return bad("client.id is required");
        };
        let Some(message) = body.get("message").and_then(Value::as_object) else {
            return bad("message is required");
        };
        let text = match message.get("text") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return bad("message.text must be a string"),
        };
        let attachments = match message.get("attachments") {
            None | Some(Value::Null) => 0,
            Some(Value::Array(items)) => {
                let ok = items.iter().all(|a| {
                    ["name", "url"].iter().all(|k| {
                        a.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.trim().is_empty())
                    })
                });
                if !ok {
                    return bad("message.attachments: each needs name and url");
                }
                items.len()
            }
            Some(_) => return bad("message.attachments must be a list"),
        };
        if text.trim().is_empty() && attachments == 0 {
            return bad("message.text is required");
        }
        let mut d = lock(&self.data);
        match body.get("operator") {
            None | Some(Value::Null) => {}
            Some(op) => {
                let Some(login) = op.get("login").and_then(Value::as_str) else {
                    return bad("operator.login must be a string");
                };
                if !d.operators.iter().any(|o| o.login == login) {
                    return bad(&format!("operator.login: unknown operator {login}"));
                }
            }
        }
        if !d.clients.contains(&client_id) {
            return vb_err(StatusCode::NOT_FOUND, "client not found");
        }
        let id = d.next_message.to_string();
        d.next_message += 1;
        d.sent.push((
            client_id,
            Value::Object(body.clone()),
            id.clone(),
            Utc::now(),
        ));
        Resp::json(
            StatusCode::OK,
            &json!({"success": true, "result": {"id": id}}),
        )
    }
}

impl Vendor for VbVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["x-token", "x-verbox-token"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => vb_err(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
                .with_header("retry-after", "1"),
            _ => vb_err(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.route(req)
    }
}
