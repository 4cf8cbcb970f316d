//! Every key of the single table, in one place, so the layout of DESIGN.md
//! ("State") can be read here and nowhere else builds a key by hand.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | bootstrap marker | `BOOTSTRAP` | `BOOTSTRAP` |
//! | tenant | `TENANT#{tenant}` | `META` |
//! | API key | `APIKEY#{sha256 of the key}` | `KEY` |
//! | tenant's key index | `TENANT#{tenant}` | `KEY#{key id}` |
//! | connection | `CONN#{connection}` | `META` |
//! | tenant's connection index | `TENANT#{tenant}` | `CONN#{connection}` |
//! | tenant's configuration stamp (rewritten with every connection or automation change) | `TENANT#{tenant}` | `CONFIG` |
//! | accepted event (idempotency, TTL) | `EVENT#{event}` | `ACCEPT` |
//! | a change claimed by one event (TTL) | `EVENT#{change id}` | `CHANGE` |
//! | event data too large for the bus (TTL) | `EVENT#{event}` | `DATA#{part:04}` |
//! | run (TTL) | `RUN#{run}` | `RUN` |
//! | tenant's run index (TTL, never updated) | `TENANT#{tenant}#RUNS` | `{created_at}#{run}` |
//! | automation | `AUTO#{tenant}#{automation}` | `META` |
//! | tenant's automation index | `TENANT#{tenant}` | `AUTO#{automation}` |
//! | trigger index | `TRIGGER#{connection}#{kind}` | `AUTO#{tenant}#{automation}` |
//! | poll sources | `POLL` | `{connection}#{kind}` |
//! | poll cursor (versioned) | `CURSOR#{connection}#{kind}` | `CURSOR` |
//! | links of a record | `LINK#{connection}#{entity}#{id}` | `LINKS` |
//! | what crmbridge wrote on a record (TTL) | `WRITTEN#{connection}#{entity}#{id}` | `WRITTEN` |
//! | import (versioned) | `IMPORT#{import}` | `IMPORT` |
//! | tenant's import index | `TENANT#{tenant}` | `IMPORT#{import}` |
//! | the running import of a connection | `CONN#{connection}` | `IMPORT` |
//! | a connection's refused credentials | `CONN#{connection}` | `HEALTH` |
//! | a chat's message order (versioned) | `SEQ#{connection}#{chat}` | `SEQ` |
//! | an event's place in its chat (TTL) | `EVENT#{event}` | `TURN` |
//! | an event waiting for its turn (TTL) | `EVENT#{event}` | `PARKED` |
//! | dedupe claim (TTL) | `DEDUPE#{connection}#{action}` | `{field}#{normalised value}` |
//! | tick record (TTL) | `TICK` | `{started_at}` |
//! | OAuth tokens of a connection (versioned, sealed) | `OAUTH#{connection}` | `TOKENS` |
//! | alert destination (secrets sealed) | `TENANT#{tenant}` | `ALERTDEST#{destination}` |
//! | an alert's cause (versioned) | `ALERT#{tenant}` | `{cause}#{subject}` |
//! | pending OAuth consent (TTL) | `OAUTHSTATE#{sha256 of the state}` | `STATE` |

/// A table key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

fn key(pk: String, sk: impl Into<String>) -> Key {
    Key { pk, sk: sk.into() }
}

pub fn bootstrap() -> Key {
    key("BOOTSTRAP".into(), "BOOTSTRAP")
}

pub fn tenant(tenant: &str) -> Key {
    key(format!("TENANT#{tenant}"), "META")
}

pub fn api_key(secret_hash: &str) -> Key {
    key(format!("APIKEY#{secret_hash}"), "KEY")
}

pub fn tenant_key_index(tenant: &str, key_id: &str) -> Key {
    key(format!("TENANT#{tenant}"), format!("KEY#{key_id}"))
}

pub fn connection(connection: &str) -> Key {
    key(format!("CONN#{connection}"), "META")
}

pub fn connection_health(connection: &str) -> Key {
    key(format!("CONN#{connection}"), "HEALTH")
}

pub fn oauth_tokens(connection: &str) -> Key {
    key(format!("OAUTH#{connection}"), "TOKENS")
}

pub fn oauth_state(state_hash: &str) -> Key {
    key(format!("OAUTHSTATE#{state_hash}"), "STATE")
}

pub fn config_stamp(tenant: &str) -> Key {
    key(format!("TENANT#{tenant}"), "CONFIG")
}

pub fn tenant_connection_index(tenant: &str, connection: &str) -> Key {
    key(format!("TENANT#{tenant}"), format!("CONN#{connection}"))
}

pub fn tenant_connections(tenant: &str) -> (String, &'static str) {
    (format!("TENANT#{tenant}"), "CONN#")
}

pub fn sequence(connection: &str, chat: &str) -> Key {
    key(format!("SEQ#{connection}#{chat}"), "SEQ")
}

pub fn event_turn(event: &str) -> Key {
    key(format!("EVENT#{event}"), "TURN")
}

pub fn parked_event(event: &str) -> Key {
    key(format!("EVENT#{event}"), "PARKED")
}

pub fn event_accept(event: &str) -> Key {
    key(format!("EVENT#{event}"), "ACCEPT")
}

pub fn change(change: &str) -> Key {
    key(format!("EVENT#{change}"), "CHANGE")
}

pub fn event_data_part(event: &str, part: usize) -> Key {
    key(format!("EVENT#{event}"), format!("DATA#{part:04}"))
}

pub fn run(run: &str) -> Key {
    key(format!("RUN#{run}"), "RUN")
}

pub fn tenant_runs_pk(tenant: &str) -> String {
    format!("TENANT#{tenant}#RUNS")
}

pub fn tenant_run_index(tenant: &str, created_at: &str, run: &str) -> Key {
    key(tenant_runs_pk(tenant), format!("{created_at}#{run}"))
}

pub fn tenant_keys(tenant: &str) -> (String, &'static str) {
    (format!("TENANT#{tenant}"), "KEY#")
}

pub fn automation(tenant: &str, automation: &str) -> Key {
    key(format!("AUTO#{tenant}#{automation}"), "META")
}

pub fn tenant_automation_index(tenant: &str, automation: &str) -> Key {
    key(format!("TENANT#{tenant}"), format!("AUTO#{automation}"))
}

pub fn tenant_automations(tenant: &str) -> (String, &'static str) {
    (format!("TENANT#{tenant}"), "AUTO#")
}

pub fn trigger(connection: &str, kind: &str, automation: &str) -> Key {
    key(
        format!("TRIGGER#{connection}#{kind}"),
        format!("AUTO#{automation}"),
    )
}

pub fn triggers(connection: &str, kind: &str) -> (String, &'static str) {
    (format!("TRIGGER#{connection}#{kind}"), "AUTO#")
}

pub fn poll_sources_pk() -> String {
    "POLL".into()
}

/// `scope` is the poll scope's tag (empty when the kind has none).
pub fn poll_source(connection: &str, kind: &str, scope: &str) -> Key {
    key(poll_sources_pk(), source_name(connection, kind, scope))
}

/// `{connection}#{kind}` or `{connection}#{kind}#{scope}`.
pub fn source_name(connection: &str, kind: &str, scope: &str) -> String {
    if scope.is_empty() {
        format!("{connection}#{kind}")
    } else {
        format!("{connection}#{kind}#{scope}")
    }
}

pub fn cursor(connection: &str, kind: &str, scope: &str) -> Key {
    key(
        format!("CURSOR#{}", source_name(connection, kind, scope)),
        "CURSOR",
    )
}

/// The last value a poll observed of one record's field.
pub fn observation(connection: &str, observed: &str) -> Key {
    key(format!("OBS#{connection}"), observed)
}

pub fn links(connection: &str, entity: &str, id: &str) -> Key {
    key(format!("LINK#{connection}#{entity}#{id}"), "LINKS")
}

/// What crmbridge last wrote on a record (two-way sync without echoes).
pub fn written(connection: &str, entity: &str, id: &str) -> Key {
    key(format!("WRITTEN#{connection}#{entity}#{id}"), "WRITTEN")
}

pub fn import(import: &str) -> Key {
    key(format!("IMPORT#{import}"), "IMPORT")
}

pub fn tenant_import_index(tenant: &str, import: &str) -> Key {
    key(format!("TENANT#{tenant}"), format!("IMPORT#{import}"))
}

pub fn tenant_imports(tenant: &str) -> (String, &'static str) {
    (format!("TENANT#{tenant}"), "IMPORT#")
}

/// Held while an import of the connection runs: one at a time.
pub fn running_import(connection: &str) -> Key {
    key(format!("CONN#{connection}"), "IMPORT")
}

pub fn tick(started_at: &str) -> Key {
    key("TICK".into(), started_at)
}

pub fn dedupe_claim(connection: &str, action: &str, field: &str, value: &str) -> Key {
    key(
        format!("DEDUPE#{connection}#{action}"),
        format!("{field}#{value}"),
    )
}

pub fn alert_destination(tenant: &str, destination: &str) -> Key {
    key(
        format!("TENANT#{tenant}"),
        format!("ALERTDEST#{destination}"),
    )
}

pub fn tenant_alert_destinations(tenant: &str) -> (String, &'static str) {
    (format!("TENANT#{tenant}"), "ALERTDEST#")
}

/// One item per cause and subject: raised once, resolved once.
pub fn alert(tenant: &str, cause: &str, subject: &str) -> Key {
    key(format!("ALERT#{tenant}"), format!("{cause}#{subject}"))
}

pub fn tenant_alerts(tenant: &str) -> (String, &'static str) {
    (format!("ALERT#{tenant}"), "")
}
