//! The OpenAPI 3.1 document of every route, generated from the handlers'
//! `#[utoipa::path]` attributes and the request/response types' schemas.
//!
//! The document is generated when the code changes, not when it is asked
//! for: `openapi.json` beside this crate's manifest is what the API and
//! `crmbridge openapi` serve, and a test fails when it differs from what
//! the attributes describe (`CRMBRIDGE_WRITE_OPENAPI=1 cargo test -p
//! crmbridge-api openapi` rewrites it). Building the document at run time
//! was the largest single function in the admin bootstrap (300 KB of
//! machine code for one JSON text).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crmbridge_control::admin::{ConnectionCheck, ConnectionPatch, ConnectionView, NewConnection};
use crmbridge_control::consent::{AuthorizationStart, Authorized};
use crmbridge_control::recipes::RecipeParameter;
use crmbridge_control::runs::ReplayReport;
use crmbridge_control::tenants::{
    CreatedKey, CreatedTenant, KeyView, NewKey, NewTenant, TenantView,
};
use crmbridge_engine::bookkeeping::AutomationRecord;
use crmbridge_engine::records::{Role, RunRecord, RunStatus, RunSummary, StepRecord, TenantRecord};

use crate::automations::{AutomationList, ReplaySince};
use crate::connections::{ConnectionList, ConnectionResponse, DeletedConnection};
use crate::keys::KeyList;
use crate::recipes::{InstantiateRecipe, RecipeList, RecipeView};
use crate::runs::RunPage;
use crate::{ErrorBody, ErrorDetail, FieldErrorDoc};

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer cbk_…`. Roles: owner (everything, \
                         including keys and tenants), admin (connections, automations, replays), \
                         viewer (reads runs).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "crmbridge",
        description = "The admin API of crmbridge (tenants, keys, connections, automations, runs and replay) and its webhook endpoints. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`; objects of another tenant are 404."
    ),
    paths(
        crate::hooks::webhook,
        crate::hooks::webhook_get,
        crate::chat::chat,
        crate::health::health,
        crate::health::live,
        crate::openapi_document,
        crate::tenants::get_tenant,
        crate::tenants::create_tenant,
        crate::keys::list_keys,
        crate::keys::create_key,
        crate::keys::delete_key,
        crate::connections::list_connections,
        crate::connections::create_connection,
        crate::connections::get_connection,
        crate::connections::update_connection,
        crate::connections::delete_connection,
        crate::connections::check_connection,
        crate::connections::connection_catalog,
        crate::connections::authorize_connection,
        crate::connections::oauth_callback,
        crate::automations::list_automations,
        crate::automations::create_automation,
        crate::automations::get_automation,
        crate::automations::put_automation,
        crate::automations::delete_automation,
        crate::automations::enable_automation,
        crate::automations::disable_automation,
        crate::automations::replay_automation,
        crate::recipes::list_recipes,
        crate::recipes::instantiate_recipe,
        crate::runs::list_runs,
        crate::runs::get_run,
        crate::runs::replay_run,
        crate::imports::start_import,
        crate::imports::list_imports,
        crate::imports::get_import,
        crate::imports::resume_import,
        crate::alerts::create_alert_destination,
        crate::alerts::list_alert_destinations,
        crate::alerts::delete_alert_destination,
        crate::alerts::test_alert_destination,
        crate::alerts::rotate_alert_secret,
        crate::alerts::list_alerts,
        crate::dry_runs::test_automation,
        crate::dry_runs::test_automation_document,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, FieldErrorDoc, ConnectionResponse, ConnectionList, ConnectionView,
        NewConnection, ConnectionPatch, AutomationList, AutomationRecord, KeyList, KeyView, NewKey,
        CreatedKey, NewTenant, CreatedTenant, TenantView, TenantRecord, Role, RunPage, RunSummary,
        RunRecord, RunStatus, StepRecord, ReplaySince, ReplayReport, RecipeList, RecipeView,
        InstantiateRecipe, DeletedConnection, ConnectionCheck, RecipeParameter,
        AuthorizationStart, Authorized, crate::imports::NewImport, crate::imports::ImportList, crate::recipes::InstantiatedRecipe,
        crmbridge_engine::records::ImportRecord, crmbridge_engine::records::ImportProgress,
        crmbridge_engine::records::ImportStatus,
        crmbridge_control::alerts::NewAlertDestination, crmbridge_control::alerts::AlertDestinationView,
        crmbridge_control::alerts::CreatedAlertDestination, crate::alerts::AlertDestinationList,
        crate::alerts::AlertList, crmbridge_engine::records::AlertRecord,
        crmbridge_engine::records::AlertCause, crmbridge_engine::records::AlertStatus,
        crmbridge_engine::records::AlertSendOutcome,
        crate::dry_runs::AutomationTest, crate::dry_runs::SampleEvent, crate::dry_runs::SampleWebhook,
    )),
    modifiers(&BearerKey),
    tags(
        (name = "tenants"), (name = "keys"), (name = "connections"), (name = "automations"),
        (name = "recipes"), (name = "runs"), (name = "imports"), (name = "alerts"), (name = "webhooks"), (name = "meta"),
    )
)]
struct ApiDoc;

/// The committed document, as served.
const DOCUMENT: &str = include_str!("../openapi.json");

/// The document the handlers' attributes describe, generated now.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON (the committed one, which a test keeps equal
/// to [`openapi`]).
pub fn openapi_json() -> &'static str {
    DOCUMENT
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// The generated document, exactly as committed.
    fn generated() -> String {
        let mut text = super::openapi().to_pretty_json().unwrap();
        text.push('\n');
        text
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = generated();
        if std::env::var("CRMBRIDGE_WRITE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            super::DOCUMENT == generated,
            "{path} is not what the handlers describe: regenerate it with \
             CRMBRIDGE_WRITE_OPENAPI=1 cargo test -p crmbridge-api openapi"
        );
    }

    #[test]
    fn the_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (_, method, path) in crate::ROUTES {
            let operation = &doc["paths"][*path][method.to_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {path} is not in the document"
            );
            assert!(!operation["responses"].as_object().unwrap().is_empty());
        }
        for (method, path) in crate::LOCAL_ROUTES {
            let operation = &doc["paths"][*path][method.to_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {path} is not in the document"
            );
        }
        let listed: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                    .count()
            })
            .sum();
        assert_eq!(
            listed,
            crate::ROUTES.len() + crate::LOCAL_ROUTES.len(),
            "the document lists a route ROUTES and LOCAL_ROUTES do not"
        );
    }
}
