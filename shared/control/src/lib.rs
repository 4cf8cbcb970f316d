//! The admin side of crmbridge: tenants and their API keys, connections
//! (with OAuth consent), automations, the run log and replay, recipes.
//!
//! It is a crate of its own so that the rule "the event pipeline never
//! reaches into admin code" is the compiler's: `crmbridge-engine` (state
//! and pipeline: ingest, dispatch, tick, poll, tokens) cannot depend on
//! this crate, this crate depends on it. Each concern is a trait
//! implemented by [`Engine`] — [`admin::Admin`], [`alerts::Alerts`], [`automations::Automations`],
//! [`runs::Runs`], [`tenants::Tenants`], [`consent::Consent`] — so callers
//! write `engine.create_connection(…)` after `use crmbridge_control::prelude::*`.
//!
//! The traits are implemented by the one concrete [`Engine`] and called on
//! it, never through generics: the futures' `Send` is known to callers
//! (axum handlers, Lambda mains), which is why `async fn` in a public trait
//! is fine here.
#![allow(async_fn_in_trait)]

pub mod admin;
pub mod alerts;
pub mod automations;
pub mod consent;
pub mod dry_runs;
pub mod recipes;
pub mod runs;
pub mod tenants;

pub use crmbridge_engine::Engine;

/// Every admin trait, for `use crmbridge_control::prelude::*`.
pub mod prelude {
    pub use crate::admin::Admin;
    pub use crate::alerts::Alerts;
    pub use crate::automations::Automations;
    pub use crate::consent::Consent;
    pub use crate::dry_runs::DryRuns;
    pub use crate::runs::Runs;
    pub use crate::tenants::Tenants;
}
