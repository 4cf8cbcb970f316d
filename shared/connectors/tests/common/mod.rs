//! A vendor from the built-in registry, called by action id the way these
//! suites read: `vendor("moysklad").execute(&ctx, "moysklad.…", …)`.
#![allow(dead_code, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crmbridge_connectors::{
    ActionError, ActionOutput, CallContext, PollBatch, Registry, Resend, Sent, Vendor, VendorClient,
};
use crmbridge_mapping::LookupKey;
use serde_json::{Map, Value};

pub struct Under(pub Vendor);

/// A fresh instance of the vendor (no caches shared with other tests).
pub fn vendor(app: &str) -> Under {
    Under(
        Registry::builtin()
            .get(app)
            .cloned()
            .expect("a built-in vendor"),
    )
}

impl Under {
    fn action(&self, id: &str) -> &dyn crmbridge_connectors::Action {
        self.0
            .find_action(id)
            .unwrap_or_else(|| panic!("{} declares no action {id}", self.0.app))
            .as_ref()
    }

    pub async fn execute(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        self.action(action).execute(ctx, fields, target).await
    }

    pub async fn find(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        self.action(action)
            .lookup()
            .expect("a searchable action")
            .find(ctx, keys)
            .await
    }

    pub fn resend(&self, action: &str, fields: &Map<String, Value>) -> Resend {
        self.action(action).resend(fields)
    }

    pub async fn find_sent(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        fields: &Map<String, Value>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Sent, ActionError> {
        self.action(action).find_sent(ctx, fields, since).await
    }

    pub async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        self.0
            .account
            .as_ref()
            .expect("an account")
            .check(ctx)
            .await
    }

    pub async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        self.0
            .poller
            .as_ref()
            .expect("a poller")
            .poll(ctx, kind, scope, cursor, now)
            .await
    }
}

/// A call context on a fake (any base URL allowed), with API-key
/// credentials.
pub fn context<'a>(
    settings: &'a Value,
    credentials: &'a BTreeMap<String, String>,
    http: &'a VendorClient,
    key: &'a str,
) -> CallContext<'a> {
    CallContext {
        connection: "con_test",
        settings,
        credentials,
        http,
        idempotency_key: key,
        allow_any_base_url: true,
        tokens: None,
    }
}
