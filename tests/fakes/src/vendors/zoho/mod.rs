//! Fake Zoho CRM REST API: the "API domain" (`https://www.zohoapis.{dc}`)
//! serving `/crm/{version}/…`. Zoho's accounts server (consent, tokens) is a
//! [`crate::oauth::FakeOAuth`] started with [`crate::oauth::OAuthConfig::zoho`];
//! this fake checks the access tokens it issued through a
//! [`TokenChecker`], and a test points the token answers' `api_domain` here
//! with `oauth.set_api_domain(&zoho.base_url())`.
//!
//! Mirrors (facts: `shared/connectors/src/vendors/zoho/API.md`, from Zoho's
//! own v7 docs, SDKs and api-limits pages):
//! * paths `/crm/{version}/…` with `version` matching `v\d+(\.\d+)?` (`v2`,
//!   `v2.1`, `v7`, `v8`); any other path → 404 `INVALID_URL_PATTERN`; a
//!   method a path does not take → 400 `INVALID_REQUEST_METHOD`.
//! * auth `Authorization: Zoho-oauthtoken <token>` (scheme case-insensitive):
//!   missing header or another scheme (`Bearer`) → 401
//!   `AUTHENTICATION_FAILURE`; a token the [`TokenChecker`] does not find
//!   valid (unknown, expired, revoked) → 401 `INVALID_TOKEN`
//!   `invalid oauth token`. The request log redacts `authorization`.
//! * every error body is `{"code","details","message","status":"error"}`.
//! * `GET /org`; `GET /users?type=AllUsers|ActiveUsers|DeactiveUsers|
//!   ConfirmedUsers|NotConfirmedUsers|DeletedUsers|ActiveConfirmedUsers|
//!   AdminUsers|ActiveConfirmedAdmins|CurrentUser&page&per_page` (default
//!   `AllUsers`, 200 a page, more → 400 `INVALID_DATA`; an empty page → 204
//!   with no body); the fake starts with one active administrator
//!   [`ADMIN_EMAIL`] ("Admin User"), who is also the token's user
//!   (`CurrentUser`, `Created_By`).
//! * `GET /settings/fields?module=` (standard fields of Leads, Contacts,
//!   Deals, Tasks, Calls plus, on Leads, the six Ringostat custom text fields
//!   [`RINGOSTAT_LEAD_FIELDS`]); `GET /settings/modules`.
//! * `POST /{Module}` (insert, ≤ 100 records → else 400 `LIMIT_EXCEEDED`),
//!   `POST /{Module}/upsert` (`duplicate_check_fields`, default the
//!   module's unique fields), `PUT /{Module}/{id}` and bulk `PUT /{Module}`
//!   (ids in the records), `GET /{Module}/{id}` (unknown → 204),
//!   `GET /{Module}` (a page of records, none → 204). Each record is checked
//!   on its own and answered in `data[i]`: `MANDATORY_NOT_FOUND`,
//!   `INVALID_DATA` (a key that is not a field of the module — `$`-keys such
//!   as `$se_module` pass, `id` does not on insert —, a value of the wrong
//!   type or longer than the field's `length`, an `Owner` that is not
//!   `{"id"}` of an active user, a `What_Id` / `Who_Id` / `Contact_Name`
//!   that is not `{"id"}` of an existing record — `What_Id` in the module
//!   named by `$se_module`, default Deals, `Who_Id` in Contacts or Leads —,
//!   a `Call_Start_Time` that is not RFC 3339, a `Call_Type` other than
//!   `Inbound|Outbound|Missed`, a date not `YYYY-MM-DD`, an e-mail without
//!   `@`), `DUPLICATE_DATA` on a field made unique with
//!   [`FakeZoho::set_unique`] (case-insensitive, phones by digits; records
//!   earlier in the same batch count). Success items carry `id`,
//!   `Created_Time`, `Modified_Time`, `Created_By`, `Modified_By`. Records
//!   are stored as sent, plus `id` (19 digits), `Owner` expanded to
//!   `{"id","name","email"}` (the administrator when absent), a computed
//!   `Full_Name` (Leads, Contacts), `Created_Time`, `Modified_Time`,
//!   `Created_By`, `Modified_By` (times in the org's zone, Europe/Kiev).
//! * `GET /{Module}/search` with `criteria`, `email`, `phone` or `word`
//!   (that precedence); `phone` matches every phone field whose digits
//!   **contain** the query's digits, `email` is case-insensitive equality on
//!   e-mail fields, `word` (≥ 2 characters) a case-insensitive substring of
//!   any text value; `criteria` `(Field:op:value)` groups joined by
//!   `and`/`or` (one kind per level; nest parentheses to mix), `\(`, `\)`,
//!   `\,` escapes, ≤ 10 conditions, operators `equals` (**contains** for
//!   text-like fields, as Zoho warns; exact for ids, lookups, dates),
//!   `not_equal`, `starts_with`, `in`, `greater_than`, `greater_equal`,
//!   `less_than`, `less_equal`. Paging `page`, `per_page` (≤ 200), at most
//!   2000 results (a page past them → 400 `LIMIT_REACHED`); no match → 204
//!   with an empty body. [`FakeZoho::set_index_lag`] models Zoho's search
//!   indexing delay deterministically: records the API creates while it is
//!   on stay invisible to search until [`FakeZoho::reindex`].
//! * `POST /coql` `{"select_query": "select id, Owner, Phone from Leads
//!   where Phone like '%671234567' and Last_Name = 'x' limit 10"}`:
//!   `select` columns (no `*`), `from`, optional `where` with `=`, `!=`,
//!   `<`, `<=`, `>`, `>=`, `like` / `not like` (`%` wildcards), `is [not]
//!   null`, `[not] in (…)`, `and` / `or` / parentheses; `order by` column
//!   `[asc|desc]`; `limit N`, `limit offset, N`, `offset N`. Text compares
//!   case-insensitively; a phone field also matches on its digits. Reads
//!   what was just written (no index lag). → `{"data":[{"id",…}],
//!   "info":{"count","more_records"}}`, no rows → 204; bad syntax → 400
//!   `SYNTAX_ERROR`, an unknown module or column → 400 `INVALID_QUERY`.
//! * credits and concurrency ([`FakeZoho::set_credit_limit`],
//!   [`FakeZoho::set_concurrency_limit`]): every authenticated request costs
//!   one credit ([`FakeZoho::credits_used`]); once they are used up, or when
//!   a request arrives while the limit of requests is already in flight →
//!   429 `TOO_MANY_REQUESTS` `You have reached the API limit` with
//!   `X-RATELIMIT-LIMIT`, `X-RATELIMIT-REMAINING: 0`, `X-RATELIMIT-RESET`
//!   (epoch milliseconds: the end of the 24-hour credit window, or one
//!   second ahead for concurrency and injected faults). While a credit limit
//!   is set every answer carries the limit and remaining headers.
//! * injected faults: `ServerError` → 500 `INTERNAL_ERROR`,
//!   `TooManyRequests` → the same 429 as above (limit header: the credit
//!   limit, else 5000).
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * the HTTP status of a partly successful batch [207; 201 when every
//!   record was added, 400 when none was — read every `data[i]` whatever
//!   the status]; upsert [200 when every record was updated, 201 when one
//!   was inserted, 207 mixed with failures, 400 all failed];
//! * the `DUPLICATE_DATA` details keys [`api_name`, `json_path`,
//!   `duplicate_record{id, module{api_name,id}}`, as v7 documents; v2
//!   returned `details.id`];
//! * whether a key that is not a field is refused or silently dropped
//!   [refused with `INVALID_DATA`]; which picklists are restricted [only
//!   `Call_Type`]; a read-only `Full_Name` sent in a record [it is ignored];
//! * the default `duplicate_check_fields` of upsert [the unique fields only;
//!   real Zoho also uses system duplicate-check fields such as Email];
//! * the rate-limit header names (a third-party digest lists
//!   `X-RATELIMIT-*` for v2) and the 429 message; the concurrency answer
//!   [the same 429];
//! * `AUTHENTICATION_FAILURE` for a missing header; the search error codes
//!   [`REQUIRED_PARAM_MISSING` with `param_name` when no search parameter is
//!   given, `INVALID_QUERY` for a bad criteria, a `phone` with fewer than 2
//!   digits or a `word` shorter than 2 characters];
//! * COQL: whether `where` may be left out [it may], `limit offset, count`
//!   order [offset first], the error details [`SYNTAX_ERROR` with `{}`,
//!   `INVALID_QUERY` with `reason`, `column_name`, `clause`], `Owner` in
//!   rows [the full `{"id","name","email"}`], `more_records` [computed
//!   from the rows left];
//! * module names in paths [matched case-insensitively].
//!
//! Not modelled: notifications (`/actions/watch`), creating custom fields
//! through the API, deletes, attachments, `If-Modified-Since`, scopes
//! (`OAUTH_SCOPE_MISMATCH`), layouts, blueprint, workflow triggers (the
//! `trigger` array is accepted and ignored).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, Days, FixedOffset, NaiveDate, Offset, Utc};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::oauth::{TokenChecker, TokenState};
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The administrator the fake starts with (the token's user).
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// The custom Leads fields Ringostat's Zoho integration needs (present by default).
pub const RINGOSTAT_LEAD_FIELDS: &[&str] = &[
    "rs_utm_source",
    "rs_utm_medium",
    "rs_utm_campaign",
    "rs_utm_term",
    "rs_utm_content",
    "rs_google_client_id",
];
/// Records one insert / upsert / update may carry.
pub const MAX_RECORDS_PER_WRITE: usize = 100;
/// The largest `per_page`.
pub const MAX_PER_PAGE: usize = 200;
/// The most results a search can page through.
pub const SEARCH_RESULT_CAP: usize = 2000;
/// The largest COQL `limit`.
pub const COQL_MAX_LIMIT: usize = 2000;

/// Default `X-RATELIMIT-LIMIT` of an injected 429 when no credit limit is
/// set (the Free edition's daily credits).
const DEFAULT_LIMIT_HEADER: u64 = 5000;
/// The org's id prefix: every id is these digits and 12 more.
const ID_PREFIX: &str = "5725767";

/// (api_name, field_label, data_type, system_mandatory, length, picklist values)
type FieldSpec = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    u32,
    &'static [&'static str],
);

const LEAD_SOURCES: &[&str] = &[
    "-None-",
    "Advertisement",
    "Cold Call",
    "Employee Referral",
    "External Referral",
    "Online Store",
    "Partner",
    "Public Relations",
    "Sales Email Alias",
    "Seminar Partner",
    "Internal Seminar",
    "Trade Show",
    "Web Download",
    "Web Research",
    "Chat",
];
const LEAD_STATUSES: &[&str] = &[
    "-None-",
    "Attempted to Contact",
    "Contact in Future",
    "Contacted",
    "Junk Lead",
    "Lost Lead",
    "Not Contacted",
    "Pre-Qualified",
    "Not Qualified",
];
const STAGES: &[&str] = &[
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
];
const PIPELINES: &[&str] = &["Standard (Standard)"];
const TASK_STATUSES: &[&str] = &[
    "Not Started",
    "Deferred",
    "In Progress",
    "Completed",
    "Waiting for input",
];
const PRIORITIES: &[&str] = &["High", "Highest", "Low", "Lowest", "Normal"];
const CALL_TYPES: &[&str] = &["Inbound", "Outbound", "Missed"];
const CALL_RESULTS: &[&str] = &[
    "-None-",
    "Interested",
    "Not interested",
    "No response/Busy",
    "Requested more info",
    "Requested call back",
    "Invalid number",
];

const LEADS: &[FieldSpec] = &[
    ("Owner", "Lead Owner", "ownerlookup", false, 120, &[]),
    ("Last_Name", "Last Name", "text", true, 80, &[]),
    ("First_Name", "First Name", "text", false, 40, &[]),
    ("Full_Name", "Full Name", "text", false, 120, &[]),
    ("Company", "Company", "text", false, 200, &[]),
    ("Email", "Email", "email", false, 100, &[]),
    ("Phone", "Phone", "phone", false, 30, &[]),
    ("Mobile", "Mobile", "phone", false, 30, &[]),
    (
        "Lead_Source",
        "Lead Source",
        "picklist",
        false,
        120,
        LEAD_SOURCES,
    ),
    (
        "Lead_Status",
        "Lead Status",
        "picklist",
        false,
        120,
        LEAD_STATUSES,
    ),
    ("Description", "Description", "textarea", false, 32000, &[]),
];
const CONTACTS: &[FieldSpec] = &[
    ("Owner", "Contact Owner", "ownerlookup", false, 120, &[]),
    ("Last_Name", "Last Name", "text", true, 80, &[]),
    ("First_Name", "First Name", "text", false, 40, &[]),
    ("Full_Name", "Full Name", "text", false, 120, &[]),
    ("Email", "Email", "email", false, 100, &[]),
    ("Phone", "Phone", "phone", false, 30, &[]),
    ("Mobile", "Mobile", "phone", false, 30, &[]),
    ("Description", "Description", "textarea", false, 32000, &[]),
];
const DEALS: &[FieldSpec] = &[
    ("Owner", "Deal Owner", "ownerlookup", false, 120, &[]),
    ("Deal_Name", "Deal Name", "text", true, 120, &[]),
    ("Stage", "Stage", "picklist", true, 120, STAGES),
    ("Pipeline", "Pipeline", "picklist", false, 120, PIPELINES),
    ("Amount", "Amount", "currency", false, 16, &[]),
    ("Closing_Date", "Closing Date", "date", false, 20, &[]),
    ("Contact_Name", "Contact Name", "lookup", false, 120, &[]),
    ("Description", "Description", "textarea", false, 32000, &[]),
];
const TASKS: &[FieldSpec] = &[
    ("Owner", "Task Owner", "ownerlookup", false, 120, &[]),
    ("Subject", "Subject", "text", true, 300, &[]),
    ("Due_Date", "Due Date", "date", false, 20, &[]),
    ("Status", "Status", "picklist", false, 120, TASK_STATUSES),
    ("Priority", "Priority", "picklist", false, 120, PRIORITIES),
    ("What_Id", "Related To", "lookup", false, 120, &[]),
    ("Who_Id", "Contact Name", "lookup", false, 120, &[]),
    ("Description", "Description", "textarea", false, 32000, &[]),
    ("Remind_At", "Reminder", "reminder", false, 120, &[]),
];
const CALLS: &[FieldSpec] = &[
    ("Owner", "Call Owner", "ownerlookup", false, 120, &[]),
    ("Subject", "Subject", "text", true, 300, &[]),
    ("Call_Type", "Call Type", "picklist", true, 120, CALL_TYPES),
    (
        "Call_Start_Time",
        "Call Start Time",
        "datetime",
        true,
        120,
        &[],
    ),
    ("Call_Duration", "Call Duration", "text", true, 20, &[]),
    (
        "Call_Result",
        "Call Result",
        "picklist",
        false,
        120,
        CALL_RESULTS,
    ),
    ("What_Id", "Related To", "lookup", false, 120, &[]),
    ("Who_Id", "Contact Name", "lookup", false, 120, &[]),
    ("Description", "Description", "textarea", false, 32000, &[]),
];

/// (api_name, singular label, standard fields)
const MODULES: &[(&str, &str, &[FieldSpec])] = &[
    ("Leads", "Lead", LEADS),
    ("Contacts", "Contact", CONTACTS),
    ("Deals", "Deal", DEALS),
    ("Tasks", "Task", TASKS),
    ("Calls", "Call", CALLS),
];

/// Columns every record has besides its fields (COQL may name them).
const SYSTEM_COLUMNS: &[&str] = &[
    "id",
    "Created_Time",
    "Modified_Time",
    "Created_By",
    "Modified_By",
];

#[derive(Debug, Clone)]
struct Field {
    api_name: String,
    label: String,
    data_type: String,
    custom: bool,
    mandatory: bool,
    length: u32,
    id: String,
    unique: bool,
    picklist: Vec<String>,
}

impl Field {
    fn read_only(&self) -> bool {
        self.api_name == "Full_Name"
    }

    fn is_phone(&self) -> bool {
        self.data_type == "phone"
    }

    fn is_id_like(&self) -> bool {
        matches!(self.data_type.as_str(), "ownerlookup" | "lookup")
    }

    fn is_text_like(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "text" | "textarea" | "email" | "phone" | "picklist"
        )
    }

    fn json_type(&self) -> &'static str {
        match self.data_type.as_str() {
            "ownerlookup" | "lookup" | "reminder" => "jsonobject",
            "currency" => "double",
            _ => "string",
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "api_name": self.api_name,
            "field_label": self.label,
            "display_label": self.label,
            "data_type": self.data_type,
            "json_type": self.json_type(),
            "custom_field": self.custom,
            "system_mandatory": self.mandatory,
            "length": self.length,
            "id": self.id,
            "visible": true,
            "read_only": self.read_only(),
            "unique": if self.unique { json!({"casesensitive": false}) } else { json!({}) },
        });
        if self.data_type == "picklist" {
            v["pick_list_values"] = Value::Array(
                self.picklist
                    .iter()
                    .map(|p| json!({"display_value": p, "actual_value": p}))
                    .collect(),
            );
        }
        v
    }
}

#[derive(Debug, Clone)]
struct Stored {
    value: Map<String, Value>,
    /// Visible to `/search` (see [`FakeZoho::set_index_lag`]).
    indexed: bool,
}

impl Stored {
    fn id(&self) -> &str {
        self.value.get("id").and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone)]
struct Module {
    api_name: &'static str,
    singular: &'static str,
    id: String,
    fields: Vec<Field>,
    records: Vec<Stored>,
}

impl Module {
    fn field(&self, api_name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.api_name == api_name)
    }

    /// A field by name, case-insensitively (COQL, criteria).
    fn field_ci(&self, name: &str) -> Option<&Field> {
        self.field(name).or_else(|| {
            self.fields
                .iter()
                .find(|f| f.api_name.eq_ignore_ascii_case(name))
        })
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.records.iter().position(|r| r.id() == id)
    }
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    email: String,
    full_name: String,
    first_name: String,
    last_name: String,
    status: String,
    admin: bool,
}

impl User {
    fn active(&self) -> bool {
        self.status == "active"
    }

    fn owner_json(&self) -> Value {
        json!({"id": self.id, "name": self.full_name, "email": self.email})
    }

    fn short_json(&self) -> Value {
        json!({"id": self.id, "name": self.full_name})
    }
}

#[derive(Debug)]
struct Data {
    org_id: String,
    role_ids: (String, String),
    profile_ids: (String, String),
    users: Vec<User>,
    modules: Vec<Module>,
    next_id: u64,
    index_lag: bool,
    credit_limit: Option<u64>,
    credits_used: u64,
    credit_window_start: Option<DateTime<Utc>>,
    concurrency_limit: Option<usize>,
    rate_limited: usize,
}

impl Data {
    fn new() -> Self {
        let mut d = Data {
            org_id: String::new(),
            role_ids: (String::new(), String::new()),
            profile_ids: (String::new(), String::new()),
            users: Vec::new(),
            modules: Vec::new(),
            next_id: 1000,
            index_lag: false,
            credit_limit: None,
            credits_used: 0,
            credit_window_start: None,
            concurrency_limit: None,
            rate_limited: 0,
        };
        d.org_id = d.new_id();
        d.role_ids = (d.new_id(), d.new_id());
        d.profile_ids = (d.new_id(), d.new_id());
        d.add_user(ADMIN_EMAIL, "Admin User", "active", true);
        for (api_name, singular, specs) in MODULES {
            let id = d.new_id();
            let mut fields = Vec::new();
            for (name, label, data_type, mandatory, length, picklist) in specs.iter() {
                fields.push(Field {
                    api_name: (*name).to_owned(),
                    label: (*label).to_owned(),
                    data_type: (*data_type).to_owned(),
                    custom: false,
                    mandatory: *mandatory,
                    length: *length,
                    id: d.new_id(),
                    unique: false,
                    picklist: picklist.iter().map(|p| (*p).to_owned()).collect(),
                });
            }
            d.modules.push(Module {
                api_name,
                singular,
                id,
                fields,
                records: Vec::new(),
            });
        }
        for name in RINGOSTAT_LEAD_FIELDS {
            let _ = d.add_custom_field("Leads", name);
        }
        d
    }

    /// A fresh 19-digit id.
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{ID_PREFIX}{:012}", self.next_id)
    }

    fn add_user(&mut self, email: &str, full_name: &str, status: &str, admin: bool) -> String {
        let id = self.new_id();
        let full_name = full_name.trim();
        let (first, last) = match full_name.split_once(char::is_whitespace) {
            Some((f, l)) => (f.to_owned(), l.trim().to_owned()),
            None => (String::new(), full_name.to_owned()),
        };
        self.users.push(User {
            id: id.clone(),
            email: email.to_owned(),
            full_name: full_name.to_owned(),
            first_name: first,
            last_name: last,
            status: status.to_owned(),
            admin,
        });
        id
    }

    /// The token's user: the first administrator.
    fn current_user(&self) -> Option<&User> {
        self.users.iter().find(|u| u.admin)
    }

    fn module_idx(&self, name: &str) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| m.api_name == name)
            .or_else(|| {
                self.modules
                    .iter()
                    .position(|m| m.api_name.eq_ignore_ascii_case(name))
            })
    }

    fn add_custom_field(&mut self, module: &str, api_name: &str) -> Result<String, FakeError> {
        let m = self
            .module_idx(module)
            .ok_or_else(|| FakeError::NotFound(format!("module {module}")))?;
        if self.modules[m].field(api_name).is_some() {
            return Err(FakeError::Invalid(format!(
                "{module} already has a field {api_name}"
            )));
        }
        let id = self.new_id();
        self.modules[m].fields.push(Field {
            api_name: api_name.to_owned(),
            label: api_name.to_owned(),
            data_type: "text".to_owned(),
            custom: true,
            mandatory: false,
            length: 255,
            id: id.clone(),
            unique: false,
            picklist: Vec::new(),
        });
        Ok(id)
    }

    fn user_json(&self, u: &User) -> Value {
        let (role, profile) = if u.admin {
            (
                json!({"name": "CEO", "id": self.role_ids.0}),
                json!({"name": "Administrator", "id": self.profile_ids.0}),
            )
        } else {
            (
                json!({"name": "Manager", "id": self.role_ids.1}),
                json!({"name": "Standard", "id": self.profile_ids.1}),
            )
        };
        json!({
            "id": u.id,
            "email": u.email,
            "full_name": u.full_name,
            "first_name": u.first_name,
            "last_name": u.last_name,
            "status": u.status,
            "role": role,
            "profile": profile,
            "confirm": true,
            "zuid": format!("7{}", &u.id[u.id.len().saturating_sub(8)..]),
            "time_zone": "Europe/Kiev",
        })
    }

    /// Counts one request against the limits: `Err` is the 429.
    fn admit(&mut self, in_flight: usize) -> R<()> {
        if let Some(max) = self.concurrency_limit
            && in_flight > max
        {
            self.rate_limited += 1;
            return Err(too_many(
                Some(self.credit_limit.unwrap_or(DEFAULT_LIMIT_HEADER)),
                soon_ms(),
            ));
        }
        if let Some(limit) = self.credit_limit
            && self.credits_used >= limit
        {
            self.rate_limited += 1;
            return Err(too_many(Some(limit), self.credit_reset_ms()));
        }
        if self.credit_window_start.is_none() {
            self.credit_window_start = Some(Utc::now());
        }
        self.credits_used += 1;
        Ok(())
    }

    fn credit_reset_ms(&self) -> i64 {
        let start = self.credit_window_start.unwrap_or_else(Utc::now);
        (start + chrono::Duration::hours(24)).timestamp_millis()
    }
}

struct Inner {
    tokens: TokenChecker,
    base_url: String,
    data: Mutex<Data>,
}

/// A running fake Zoho CRM API host. Dropping it stops the server.
pub struct FakeZoho {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeZoho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeZoho")
            .field("addr", &self.server.addr)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

impl FakeZoho {
    /// Starts the API host; access tokens are checked with `tokens` (from
    /// [`crate::oauth::FakeOAuth::token_checker`]).
    pub async fn start(tokens: TokenChecker) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|addr| {
            let inner = Arc::new(Inner {
                tokens,
                base_url: format!("http://{addr}"),
                data: Mutex::new(Data::new()),
            });
            inner_out = Some(inner.clone());
            Arc::new(ZohoVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeZoho { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the API domain (`https://www.zohoapis.com`);
    /// the API is under `/crm/{version}`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The org's id.
    pub fn org_id(&self) -> String {
        lock(&self.inner.data).org_id.clone()
    }

    /// Adds a CRM user (`status` `active`, `disabled`, `deleted`, …); the
    /// first word of `full_name` is the first name. Returns the user's id.
    pub fn add_user(&self, email: &str, full_name: &str, status: &str) -> String {
        lock(&self.inner.data).add_user(email, full_name, status, false)
    }

    /// The id of the user with this e-mail (case-insensitive).
    pub fn user_id(&self, email: &str) -> Option<String> {
        lock(&self.inner.data)
            .users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(email))
            .map(|u| u.id.clone())
    }

    /// Changes a user's status (`active`, `disabled`, …); `false` when no
    /// user has this e-mail.
    pub fn set_user_status(&self, email: &str, status: &str) -> bool {
        let mut d = lock(&self.inner.data);
        match d
            .users
            .iter_mut()
            .find(|u| u.email.eq_ignore_ascii_case(email))
        {
            Some(u) => {
                u.status = status.to_owned();
                true
            }
            None => false,
        }
    }

    /// Adds a custom single-line text field (length 255, label = api name)
    /// to `module`; returns its field id.
    pub fn add_custom_field(&self, module: &str, api_name: &str) -> Result<String, FakeError> {
        lock(&self.inner.data).add_custom_field(module, api_name)
    }

    /// Removes a field from `module` (e.g. one of the `rs_*` Leads fields);
    /// `false` when there was none.
    pub fn remove_field(&self, module: &str, api_name: &str) -> bool {
        let mut d = lock(&self.inner.data);
        let Some(m) = d.module_idx(module) else {
            return false;
        };
        let fields = &mut d.modules[m].fields;
        let before = fields.len();
        fields.retain(|f| f.api_name != api_name);
        fields.len() != before
    }

    /// Marks a field unique: inserts and updates with a value another record
    /// already has get `DUPLICATE_DATA`, and upsert matches on it by default.
    pub fn set_unique(&self, module: &str, api_name: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let m = d
            .module_idx(module)
            .ok_or_else(|| FakeError::NotFound(format!("module {module}")))?;
        let field = d.modules[m]
            .fields
            .iter_mut()
            .find(|f| f.api_name == api_name)
            .ok_or_else(|| FakeError::NotFound(format!("field {module}.{api_name}")))?;
        field.unique = true;
        Ok(())
    }

    /// The field metadata of `module` as `GET /settings/fields` answers it.
    pub fn fields(&self, module: &str) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.module_idx(module)
            .map(|m| d.modules[m].fields.iter().map(Field::json).collect())
            .unwrap_or_default()
    }

    /// Every record of `module` as stored, in creation order (empty for an
    /// unknown module).
    pub fn records(&self, module: &str) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.module_idx(module)
            .map(|m| {
                d.modules[m]
                    .records
                    .iter()
                    .map(|r| Value::Object(r.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One record of `module` by id.
    pub fn record(&self, module: &str, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        let m = d.module_idx(module)?;
        let module = &d.modules[m];
        module
            .position(id)
            .map(|i| Value::Object(module.records[i].value.clone()))
    }

    /// Seeds a record directly (as if created in the UI), without the API's
    /// checks; it is searchable at once whatever the index lag. `Owner` may
    /// be `{"id"}` of a user (else the administrator); an `id` in `record`
    /// is replaced. Returns the new id.
    pub fn insert_record(&self, module: &str, record: Value) -> Result<String, FakeError> {
        let mut d = lock(&self.inner.data);
        let m = d
            .module_idx(module)
            .ok_or_else(|| FakeError::NotFound(format!("module {module}")))?;
        let Value::Object(mut map) = record else {
            return Err(FakeError::Invalid("a record must be a JSON object".into()));
        };
        map.remove("id");
        if let Some(owner) = map.get("Owner").and_then(id_of) {
            match d.users.iter().find(|u| u.id == owner) {
                Some(u) => {
                    map.insert("Owner".into(), u.owner_json());
                }
                None => {
                    map.remove("Owner");
                }
            }
        }
        Ok(store_new(&mut d, m, map, true))
    }

    /// While on, records created through the API are invisible to
    /// `/search` until [`FakeZoho::reindex`] (COQL and get-by-id see them).
    pub fn set_index_lag(&self, lag: bool) {
        lock(&self.inner.data).index_lag = lag;
    }

    /// The search index catches up: every record becomes searchable.
    pub fn reindex(&self) {
        for m in lock(&self.inner.data).modules.iter_mut() {
            for r in m.records.iter_mut() {
                r.indexed = true;
            }
        }
    }

    /// Credits available (`None`, the default: unlimited). Credits already
    /// used count against a new limit; see [`FakeZoho::reset_credits`].
    pub fn set_credit_limit(&self, limit: Option<u64>) {
        lock(&self.inner.data).credit_limit = limit;
    }

    /// A new 24-hour window: no credit used.
    pub fn reset_credits(&self) {
        let mut d = lock(&self.inner.data);
        d.credits_used = 0;
        d.credit_window_start = None;
    }

    /// Requests allowed in flight at once (`None`, the default: unlimited).
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        lock(&self.inner.data).concurrency_limit = limit;
    }

    /// Credits used: authenticated requests that passed the limits.
    pub fn credits_used(&self) -> u64 {
        lock(&self.inner.data).credits_used
    }

    /// Requests refused with 429 by the credit or concurrency limit (not
    /// injected faults).
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limited
    }
}

// ---------------------------------------------------------------------------
// Answers

fn api_error(status: StatusCode, code: &str, message: &str, details: Value) -> Resp {
    Resp::json(
        status,
        &json!({"code": code, "details": details, "message": message, "status": "error"}),
    )
}

fn invalid_url() -> Resp {
    api_error(
        StatusCode::NOT_FOUND,
        "INVALID_URL_PATTERN",
        "Please check if the URL trying to access is a correct one",
        json!({}),
    )
}

fn invalid_method() -> Resp {
    api_error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST_METHOD",
        "The http request method type is not a valid one",
        json!({}),
    )
}

fn invalid_module() -> Resp {
    api_error(
        StatusCode::BAD_REQUEST,
        "INVALID_MODULE",
        "the module name given seems to be invalid",
        json!({}),
    )
}

fn param_missing(name: &str) -> Resp {
    api_error(
        StatusCode::BAD_REQUEST,
        "REQUIRED_PARAM_MISSING",
        "One of the expected parameter is missing",
        json!({"param_name": name}),
    )
}

fn invalid_param(name: &str) -> Resp {
    api_error(
        StatusCode::BAD_REQUEST,
        "INVALID_DATA",
        "invalid data",
        json!({"param_name": name}),
    )
}

fn invalid_query(message: &str, details: Value) -> Resp {
    api_error(StatusCode::BAD_REQUEST, "INVALID_QUERY", message, details)
}

fn no_content() -> Resp {
    Resp::new(StatusCode::NO_CONTENT)
}

fn soon_ms() -> i64 {
    (Utc::now() + chrono::Duration::seconds(1)).timestamp_millis()
}

fn too_many(limit: Option<u64>, reset_ms: i64) -> Resp {
    let mut resp = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_REQUESTS",
        "You have reached the API limit",
        json!({}),
    );
    if let Some(limit) = limit {
        resp = resp.with_header("x-ratelimit-limit", &limit.to_string());
    }
    resp.with_header("x-ratelimit-remaining", "0")
        .with_header("x-ratelimit-reset", &reset_ms.to_string())
}

/// A per-record error item.
fn item_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

fn invalid_item(api_name: &str, i: usize) -> Value {
    invalid_item_with(api_name, i, Map::new())
}

fn invalid_item_with(api_name: &str, i: usize, extra: Map<String, Value>) -> Value {
    let mut details = Map::new();
    details.insert("api_name".into(), json!(api_name));
    details.insert("json_path".into(), json!(format!("$.data[{i}].{api_name}")));
    details.extend(extra);
    item_error("INVALID_DATA", "invalid data", Value::Object(details))
}

fn one(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    m
}

// ---------------------------------------------------------------------------
// Helpers

/// Kyiv's offset at `utc` (EET, EEST from the last Sunday of March to the
/// last Sunday of October, 01:00 UTC).
fn kyiv_offset(utc: DateTime<Utc>) -> FixedOffset {
    let year = utc.year();
    let last_sunday = |month: u32| -> Option<chrono::NaiveDateTime> {
        let next = NaiveDate::from_ymd_opt(year, month + 1, 1)?;
        let last = next.pred_opt()?;
        let back = u64::from(last.weekday().num_days_from_sunday());
        last.checked_sub_days(Days::new(back))?.and_hms_opt(1, 0, 0)
    };
    let now = utc.naive_utc();
    let summer =
        matches!((last_sunday(3), last_sunday(10)), (Some(s), Some(e)) if now >= s && now < e);
    let hours = if summer { 3 } else { 2 };
    FixedOffset::east_opt(hours * 3600).unwrap_or_else(|| chrono::Utc.fix())
}

/// Now in Kyiv (the fake org's zone; Ringostat projects there too).
pub(crate) fn kyiv_now() -> DateTime<FixedOffset> {
    let utc = Utc::now();
    utc.with_timezone(&kyiv_offset(utc))
}

fn now_text() -> String {
    kyiv_now().format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// `{"id": …}` (string or number) → the id.
fn id_of(v: &Value) -> Option<String> {
    match v.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

/// A value as text for comparisons: ids of owners and lookups, strings,
/// numbers; `None` for null / absent.
fn value_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        obj @ Value::Object(_) => id_of(obj),
        Value::Array(_) => None,
    }
}

/// Whether two values of `field` count as the same (unique check, upsert).
fn same_value(field: &Field, a: Option<&Value>, b: Option<&Value>) -> bool {
    let (Some(a), Some(b)) = (value_text(a), value_text(b)) else {
        return false;
    };
    if field.is_phone() {
        let (da, db) = (digits(&a), digits(&b));
        return !da.is_empty() && da == db;
    }
    let (a, b) = (a.trim(), b.trim());
    !a.is_empty() && a.to_lowercase() == b.to_lowercase()
}

fn valid_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (major, minor) = match rest.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    all_digits(major) && minor.is_none_or(all_digits)
}

fn query_usize(q: &[(String, String)], name: &str, default: usize) -> R<usize> {
    match q.iter().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => v.trim().parse().map_err(|_| invalid_param(name)),
    }
}

/// `page` (≥ 1) and `per_page` (1 ..= 200).
fn paging(q: &[(String, String)]) -> R<(usize, usize)> {
    let page = query_usize(q, "page", 1)?;
    let per_page = query_usize(q, "per_page", MAX_PER_PAGE)?;
    if page == 0 {
        return Err(invalid_param("page"));
    }
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(invalid_param("per_page"));
    }
    Ok((page, per_page))
}

/// One page of `rows` → 200 `{key: […], "info"}`, or 204 when it is empty.
fn paged(key: &str, rows: Vec<Value>, page: usize, per_page: usize, total: usize) -> Resp {
    let start = (page - 1).saturating_mul(per_page);
    let slice: Vec<Value> = rows.into_iter().skip(start).take(per_page).collect();
    if slice.is_empty() {
        return no_content();
    }
    let more = start + slice.len() < total;
    Resp::json(
        StatusCode::OK,
        &json!({key: slice, "info": {"per_page": per_page, "count": slice.len(), "page": page, "more_records": more}}),
    )
}

/// Adds `id`, owner, times and `Full_Name` to a validated record and
/// stores it; returns the id.
fn store_new(d: &mut Data, m: usize, mut map: Map<String, Value>, indexed: bool) -> String {
    let id = d.new_id();
    let now = now_text();
    let me = d
        .current_user()
        .map(User::short_json)
        .unwrap_or(Value::Null);
    if !map.contains_key("Owner")
        && let Some(admin) = d.current_user()
    {
        map.insert("Owner".into(), admin.owner_json());
    }
    let mut record = Map::new();
    record.insert("id".into(), json!(id));
    record.extend(map);
    record.insert("Created_Time".into(), json!(now));
    record.insert("Modified_Time".into(), json!(now));
    record.insert("Created_By".into(), me.clone());
    record.insert("Modified_By".into(), me);
    let module = &mut d.modules[m];
    if module.field("Full_Name").is_some() {
        record.insert("Full_Name".into(), full_name(&record));
    }
    module.records.push(Stored {
        value: record,
        indexed,
    });
    id
}

fn full_name(record: &Map<String, Value>) -> Value {
    let part = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let name = format!("{} {}", part("First_Name"), part("Last_Name"));
    json!(name.trim())
}

fn write_details(record: &Map<String, Value>) -> Value {
    let mut details = Map::new();
    for key in SYSTEM_COLUMNS {
        details.insert(
            (*key).to_owned(),
            record.get(*key).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(details)
}

// ---------------------------------------------------------------------------
// Vendor

struct ZohoVendor(Arc<Inner>);

/// What a write does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Inserted,
    Updated,
    Failed,
}

impl Inner {
    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn authenticate(&self, req: &Req) -> R<()> {
        let failure = || {
            api_error(
                StatusCode::UNAUTHORIZED,
                "AUTHENTICATION_FAILURE",
                "Authentication failed",
                json!({}),
            )
        };
        let header = req.header("authorization").ok_or_else(failure)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or_else(failure)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("zoho-oauthtoken") || token.is_empty() {
            return Err(failure());
        }
        match self.tokens.check(token) {
            TokenState::Valid => Ok(()),
            TokenState::Expired | TokenState::Unknown => Err(api_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_TOKEN",
                "invalid oauth token",
                json!({}),
            )),
        }
    }

    fn route(&self, req: &Req) -> R<Resp> {
        let segs = req
            .segments_after("/crm")
            .filter(|s| s.first().is_some_and(|v| valid_version(v)) && s.len() > 1)
            .ok_or_else(invalid_url)?;
        self.authenticate(req)?;
        let mut d = lock(&self.data);
        d.admit(req.in_flight)?;
        let rest: Vec<&str> = segs.iter().skip(1).map(String::as_str).collect();
        let resp = match self.dispatch(&mut d, req, &rest) {
            Ok(r) | Err(r) => r,
        };
        Ok(match d.credit_limit {
            Some(limit) => resp
                .with_header("x-ratelimit-limit", &limit.to_string())
                .with_header(
                    "x-ratelimit-remaining",
                    &limit.saturating_sub(d.credits_used).to_string(),
                ),
            None => resp,
        })
    }

    fn dispatch(&self, d: &mut Data, req: &Req, rest: &[&str]) -> R<Resp> {
        let m = &req.method;
        match rest {
            ["org"] => match *m {
                Method::GET => Ok(Self::org(d)),
                _ => Err(invalid_method()),
            },
            ["users"] => match *m {
                Method::GET => Self::users(d, req),
                _ => Err(invalid_method()),
            },
            ["settings", "fields"] => match *m {
                Method::GET => Self::fields(d, req),
                _ => Err(invalid_method()),
            },
            ["settings", "modules"] => match *m {
                Method::GET => Ok(Self::modules(d)),
                _ => Err(invalid_method()),
            },
            ["coql"] => match *m {
                Method::POST => coql(d, req),
                _ => Err(invalid_method()),
            },
            ["org" | "users" | "settings" | "coql", ..] => Err(invalid_url()),
            [module, tail @ ..] if tail.len() <= 1 => {
                let mi = d.module_idx(module).ok_or_else(invalid_module)?;
                match (m, tail) {
                    (&Method::GET, []) => Self::list(d, mi, req),
                    (&Method::POST, []) => Self::insert(d, mi, req),
                    (&Method::PUT, []) => Self::update_bulk(d, mi, req),
                    (&Method::GET, ["search"]) => search(d, mi, req),
                    (&Method::POST, ["upsert"]) => Self::upsert(d, mi, req),
                    (&Method::GET, [id]) => Ok(Self::get(d, mi, id)),
                    (&Method::PUT, [id]) => Self::update_one(d, mi, id, req),
                    _ => Err(invalid_method()),
                }
            }
            _ => Err(invalid_url()),
        }
    }

    fn org(d: &Data) -> Resp {
        Resp::json(
            StatusCode::OK,
            &json!({"org": [{
                "id": d.org_id,
                "company_name": "Fake Org",
                "primary_email": ADMIN_EMAIL,
                "time_zone": "Europe/Kiev",
                "domain_name": "fake",
                "currency": "USD",
                "country_code": "UA",
            }]}),
        )
    }

    fn users(d: &Data, req: &Req) -> R<Resp> {
        let q = req.query_pairs();
        let kind = q
            .iter()
            .find(|(k, _)| k == "type")
            .map_or("AllUsers", |(_, v)| v.as_str());
        let keep: fn(&User) -> bool = match kind {
            "AllUsers" | "ConfirmedUsers" => |_| true,
            "ActiveUsers" | "ActiveConfirmedUsers" => User::active,
            "DeactiveUsers" => |u| u.status == "disabled",
            "DeletedUsers" => |u| u.status == "deleted",
            "NotConfirmedUsers" => |_| false,
            "AdminUsers" => |u| u.admin,
            "ActiveConfirmedAdmins" => |u| u.admin && u.active(),
            "CurrentUser" => |_| true,
            _ => return Err(invalid_param("type")),
        };
        let (page, per_page) = paging(&q)?;
        let users: Vec<Value> = if kind == "CurrentUser" {
            d.current_user()
                .map(|u| d.user_json(u))
                .into_iter()
                .collect()
        } else {
            d.users
                .iter()
                .filter(|u| keep(u))
                .map(|u| d.user_json(u))
                .collect()
        };
        let total = users.len();
        Ok(paged("users", users, page, per_page, total))
    }

    fn fields(d: &Data, req: &Req) -> R<Resp> {
        let module = req
            .query_param("module")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| param_missing("module"))?;
        let m = d.module_idx(&module).ok_or_else(invalid_module)?;
        let fields: Vec<Value> = d.modules[m].fields.iter().map(Field::json).collect();
        Ok(Resp::json(StatusCode::OK, &json!({"fields": fields})))
    }

    fn modules(d: &Data) -> Resp {
        let modules: Vec<Value> = d
            .modules
            .iter()
            .map(|m| {
                json!({"api_name": m.api_name, "module_name": m.api_name, "plural_label": m.api_name,
                       "singular_label": m.singular, "id": m.id, "api_supported": true, "generated_type": "default"})
            })
            .collect();
        Resp::json(StatusCode::OK, &json!({"modules": modules}))
    }

    fn list(d: &Data, m: usize, req: &Req) -> R<Resp> {
        let (page, per_page) = paging(&req.query_pairs())?;
        let rows: Vec<Value> = d.modules[m]
            .records
            .iter()
            .map(|r| Value::Object(r.value.clone()))
            .collect();
        let total = rows.len();
        Ok(paged("data", rows, page, per_page, total))
    }

    fn get(d: &Data, m: usize, id: &str) -> Resp {
        let module = &d.modules[m];
        match module.position(id) {
            Some(i) => Resp::json(
                StatusCode::OK,
                &json!({"data": [Value::Object(module.records[i].value.clone())]}),
            ),
            None => no_content(),
        }
    }

    /// The body's `data` array (≤ 100 objects or not) and the whole body.
    fn data_items(req: &Req) -> R<(Vec<Value>, Map<String, Value>)> {
        let body: Value = serde_json::from_slice(&req.body).map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "body is not a valid JSON",
                json!({}),
            )
        })?;
        let Value::Object(body) = body else {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"expected_data_type": "jsonobject"}),
            ));
        };
        let items = match body.get("data") {
            Some(Value::Array(items)) if !items.is_empty() => items.clone(),
            Some(Value::Array(_)) | None => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "the data array is missing or empty",
                    json!({"api_name": "data", "json_path": "$.data", "expected_data_type": "jsonarray"}),
                ));
            }
            Some(_) => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": "data", "json_path": "$.data", "expected_data_type": "jsonarray"}),
                ));
            }
        };
        if items.len() > MAX_RECORDS_PER_WRITE {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                "the no. of records exceeds the limit",
                json!({"limit": MAX_RECORDS_PER_WRITE}),
            ));
        }
        Ok((items, body))
    }

    /// Checks one record for `module`; `existing` is the record an update
    /// targets. `Ok` holds the keys to store (Owner expanded, read-only
    /// fields dropped), `Err` the error item.
    fn validate(
        d: &Data,
        m: usize,
        item: &Value,
        i: usize,
        existing: Option<usize>,
    ) -> Result<Map<String, Value>, Value> {
        let module = &d.modules[m];
        let Value::Object(rec) = item else {
            return Err(item_error(
                "INVALID_DATA",
                "invalid data",
                json!({"json_path": format!("$.data[{i}]"), "expected_data_type": "jsonobject"}),
            ));
        };
        let insert = existing.is_none();
        for f in module.fields.iter().filter(|f| f.mandatory) {
            let value = rec.get(&f.api_name);
            if (insert || value.is_some()) && is_blank(value) {
                return Err(item_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({"api_name": f.api_name, "json_path": format!("$.data[{i}].{}", f.api_name)}),
                ));
            }
        }
        let mut out = Map::new();
        for (key, value) in rec {
            if key.starts_with('$') {
                out.insert(key.clone(), value.clone());
                continue;
            }
            if key == "id" {
                if insert {
                    return Err(invalid_item(key, i));
                }
                continue;
            }
            let field = module.field(key).ok_or_else(|| invalid_item(key, i))?;
            if field.read_only() {
                continue;
            }
            if value.is_null() {
                out.insert(key.clone(), Value::Null);
                continue;
            }
            let stored = Self::check_value(d, m, field, value, rec, existing, i)?;
            out.insert(key.clone(), stored);
        }
        for f in module.fields.iter().filter(|f| f.unique) {
            let Some(value) = out.get(&f.api_name).filter(|v| !is_blank(Some(v))) else {
                continue;
            };
            let dup = module
                .records
                .iter()
                .enumerate()
                .filter(|(j, _)| Some(*j) != existing)
                .find(|(_, r)| same_value(f, r.value.get(&f.api_name), Some(value)));
            if let Some((_, r)) = dup {
                return Err(item_error(
                    "DUPLICATE_DATA",
                    "duplicate data",
                    json!({
                        "api_name": f.api_name,
                        "json_path": format!("$.data[{i}].{}", f.api_name),
                        "duplicate_record": {
                            "id": r.id(),
                            "module": {"api_name": module.api_name, "id": module.id},
                        },
                    }),
                ));
            }
        }
        Ok(out)
    }

    /// One non-null value of a field: `Ok` is what to store.
    fn check_value(
        d: &Data,
        m: usize,
        field: &Field,
        value: &Value,
        rec: &Map<String, Value>,
        existing: Option<usize>,
        i: usize,
    ) -> Result<Value, Value> {
        let key = field.api_name.as_str();
        let typed =
            |expected: &str| invalid_item_with(key, i, one("expected_data_type", json!(expected)));
        match field.data_type.as_str() {
            "ownerlookup" => {
                let id = id_of(value).ok_or_else(|| typed("jsonobject"))?;
                d.users
                    .iter()
                    .find(|u| u.id == id && u.active())
                    .map(User::owner_json)
                    .ok_or_else(|| invalid_item(key, i))
            }
            "lookup" => {
                let id = id_of(value).ok_or_else(|| typed("jsonobject"))?;
                let targets: Vec<usize> = match key {
                    "What_Id" => {
                        let named = rec.get("$se_module").and_then(Value::as_str).or_else(|| {
                            existing.and_then(|j| {
                                d.modules[m].records[j]
                                    .value
                                    .get("$se_module")
                                    .and_then(Value::as_str)
                            })
                        });
                        let target = named.unwrap_or("Deals");
                        vec![
                            d.module_idx(target)
                                .ok_or_else(|| invalid_item("$se_module", i))?,
                        ]
                    }
                    "Who_Id" => ["Contacts", "Leads"]
                        .iter()
                        .filter_map(|t| d.module_idx(t))
                        .collect(),
                    "Contact_Name" => d.module_idx("Contacts").into_iter().collect(),
                    _ => (0..d.modules.len()).collect(),
                };
                if targets
                    .iter()
                    .any(|t| d.modules[*t].position(&id).is_some())
                {
                    Ok(value.clone())
                } else {
                    Err(invalid_item(key, i))
                }
            }
            "currency" => {
                let ok = value.is_number()
                    || value
                        .as_str()
                        .is_some_and(|s| s.trim().parse::<f64>().is_ok());
                if ok {
                    Ok(value.clone())
                } else {
                    Err(typed("double"))
                }
            }
            "reminder" => Ok(value.clone()),
            data_type => {
                let Some(text) = value.as_str() else {
                    return Err(typed("string"));
                };
                if text.chars().count() > field.length as usize {
                    return Err(invalid_item_with(
                        key,
                        i,
                        one("maximum_length", json!(field.length)),
                    ));
                }
                let ok = match data_type {
                    "email" => {
                        text.trim().is_empty() || {
                            let t = text.trim();
                            t.split_once('@').is_some_and(|(a, b)| {
                                !a.is_empty() && !b.is_empty() && !b.contains('@')
                            })
                        }
                    }
                    "date" => {
                        text.is_empty() || NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
                    }
                    "datetime" => DateTime::parse_from_rfc3339(text).is_ok(),
                    "picklist" if key == "Call_Type" => CALL_TYPES.contains(&text),
                    _ => true,
                };
                if ok {
                    Ok(value.clone())
                } else {
                    Err(invalid_item(key, i))
                }
            }
        }
    }

    fn insert_one(d: &mut Data, m: usize, item: &Value, i: usize) -> Result<Value, Value> {
        let map = Self::validate(d, m, item, i, None)?;
        let indexed = !d.index_lag;
        let id = store_new(d, m, map, indexed);
        let module = &d.modules[m];
        let details = module
            .position(&id)
            .map(|j| write_details(&module.records[j].value))
            .unwrap_or_else(|| json!({"id": id}));
        Ok(details)
    }

    fn update_at(d: &mut Data, m: usize, j: usize, item: &Value, i: usize) -> Result<Value, Value> {
        let map = Self::validate(d, m, item, i, Some(j))?;
        let me = d
            .current_user()
            .map(User::short_json)
            .unwrap_or(Value::Null);
        let module = &mut d.modules[m];
        let has_full_name = module.field("Full_Name").is_some();
        let record = &mut module.records[j].value;
        record.extend(map);
        record.insert("Modified_Time".into(), json!(now_text()));
        record.insert("Modified_By".into(), me);
        if has_full_name {
            let name = full_name(record);
            record.insert("Full_Name".into(), name);
        }
        Ok(write_details(record))
    }

    fn success(message: &str, details: Value) -> Value {
        json!({"code": "SUCCESS", "details": details, "message": message, "status": "success"})
    }

    fn write_status(outcomes: &[Outcome], all_ok: StatusCode) -> StatusCode {
        let failed = outcomes.iter().filter(|o| **o == Outcome::Failed).count();
        if failed == outcomes.len() {
            StatusCode::BAD_REQUEST
        } else if failed > 0 {
            StatusCode::MULTI_STATUS
        } else {
            all_ok
        }
    }

    fn insert(d: &mut Data, m: usize, req: &Req) -> R<Resp> {
        let (items, _) = Self::data_items(req)?;
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match Self::insert_one(d, m, item, i) {
                Ok(details) => {
                    out.push(Self::success("record added", details));
                    outcomes.push(Outcome::Inserted);
                }
                Err(e) => {
                    out.push(e);
                    outcomes.push(Outcome::Failed);
                }
            }
        }
        let status = Self::write_status(&outcomes, StatusCode::CREATED);
        Ok(Resp::json(status, &json!({"data": out})))
    }

    fn unknown_id(id: &str) -> Value {
        item_error(
            "INVALID_DATA",
            "the related id given seems to be invalid",
            json!({"id": id}),
        )
    }

    fn update_one(d: &mut Data, m: usize, id: &str, req: &Req) -> R<Resp> {
        let (items, _) = Self::data_items(req)?;
        let item = items.first().cloned().unwrap_or(Value::Null);
        let result = match d.modules[m].position(id) {
            Some(j) => Self::update_at(d, m, j, &item, 0),
            None => Err(Self::unknown_id(id)),
        };
        Ok(match result {
            Ok(details) => Resp::json(
                StatusCode::OK,
                &json!({"data": [Self::success("record updated", details)]}),
            ),
            Err(e) => Resp::json(StatusCode::BAD_REQUEST, &json!({"data": [e]})),
        })
    }

    fn update_bulk(d: &mut Data, m: usize, req: &Req) -> R<Resp> {
        let (items, _) = Self::data_items(req)?;
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let result = match item.get("id").and_then(|v| value_text(Some(v))) {
                None => Err(item_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({"api_name": "id", "json_path": format!("$.data[{i}].id")}),
                )),
                Some(id) => match d.modules[m].position(&id) {
                    Some(j) => Self::update_at(d, m, j, item, i),
                    None => Err(Self::unknown_id(&id)),
                },
            };
            match result {
                Ok(details) => {
                    out.push(Self::success("record updated", details));
                    outcomes.push(Outcome::Updated);
                }
                Err(e) => {
                    out.push(e);
                    outcomes.push(Outcome::Failed);
                }
            }
        }
        let status = Self::write_status(&outcomes, StatusCode::OK);
        Ok(Resp::json(status, &json!({"data": out})))
    }

    fn upsert(d: &mut Data, m: usize, req: &Req) -> R<Resp> {
        let (items, body) = Self::data_items(req)?;
        let check: Vec<String> = match body.get("duplicate_check_fields") {
            None | Some(Value::Null) => d.modules[m]
                .fields
                .iter()
                .filter(|f| f.unique)
                .map(|f| f.api_name.clone())
                .collect(),
            Some(Value::Array(names)) => {
                let mut out = Vec::new();
                for (k, name) in names.iter().enumerate() {
                    match name.as_str().and_then(|n| d.modules[m].field(n)) {
                        Some(f) => out.push(f.api_name.clone()),
                        None => {
                            return Err(api_error(
                                StatusCode::BAD_REQUEST,
                                "INVALID_DATA",
                                "invalid data",
                                json!({"api_name": name, "json_path": format!("$.duplicate_check_fields[{k}]")}),
                            ));
                        }
                    }
                }
                out
            }
            Some(_) => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": "duplicate_check_fields", "json_path": "$.duplicate_check_fields", "expected_data_type": "jsonarray"}),
                ));
            }
        };
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let found = check.iter().find_map(|name| {
                let module = &d.modules[m];
                let field = module.field(name)?;
                let value = item.get(name).filter(|v| !is_blank(Some(v)))?;
                module
                    .records
                    .iter()
                    .position(|r| same_value(field, r.value.get(name), Some(value)))
                    .map(|j| (j, name.clone()))
            });
            let (result, outcome) = match found {
                Some((j, field)) => (
                    Self::update_at(d, m, j, item, i).map(|details| {
                        let mut v = Self::success("record updated", details);
                        v["action"] = json!("update");
                        v["duplicate_field"] = json!(field);
                        v
                    }),
                    Outcome::Updated,
                ),
                None => (
                    Self::insert_one(d, m, item, i).map(|details| {
                        let mut v = Self::success("record added", details);
                        v["action"] = json!("insert");
                        v["duplicate_field"] = Value::Null;
                        v
                    }),
                    Outcome::Inserted,
                ),
            };
            match result {
                Ok(v) => {
                    out.push(v);
                    outcomes.push(outcome);
                }
                Err(e) => {
                    out.push(e);
                    outcomes.push(Outcome::Failed);
                }
            }
        }
        let all_ok = if outcomes.contains(&Outcome::Inserted) {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let status = Self::write_status(&outcomes, all_ok);
        Ok(Resp::json(status, &json!({"data": out})))
    }
}

// ---------------------------------------------------------------------------
// Search

/// A parsed `criteria`.
#[derive(Debug, Clone, PartialEq)]
enum Crit {
    Cond {
        field: String,
        op: String,
        values: Vec<String>,
    },
    All(Vec<Crit>),
    Any(Vec<Crit>),
}

impl Crit {
    fn count(&self) -> usize {
        match self {
            Crit::Cond { .. } => 1,
            Crit::All(v) | Crit::Any(v) => v.iter().map(Crit::count).sum(),
        }
    }
}

const CRITERIA_OPS: &[&str] = &[
    "equals",
    "not_equal",
    "starts_with",
    "in",
    "greater_than",
    "greater_equal",
    "less_than",
    "less_equal",
];

struct CritParser<'a> {
    chars: Vec<char>,
    pos: usize,
    module: &'a Module,
}

impl CritParser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{c}' at position {}", self.pos))
        }
    }

    fn keyword(&mut self) -> Option<&'static str> {
        self.skip_ws();
        for kw in ["and", "or"] {
            let end = self.pos + kw.len();
            let Some(word) = self.chars.get(self.pos..end) else {
                continue;
            };
            let word: String = word.iter().collect();
            let next = self.chars.get(end);
            if word.eq_ignore_ascii_case(kw) && next.is_none_or(|c| *c == '(' || c.is_whitespace())
            {
                self.pos = end;
                return Some(kw);
            }
        }
        None
    }

    fn list(&mut self) -> Result<Crit, String> {
        let mut items = vec![self.group()?];
        let mut joiner: Option<&str> = None;
        while let Some(kw) = self.keyword() {
            if joiner.is_some_and(|j| j != kw) {
                return Err("mixing and / or needs parentheses".into());
            }
            joiner = Some(kw);
            items.push(self.group()?);
        }
        Ok(match (joiner, items.len()) {
            (_, 1) => items.remove(0),
            (Some("or"), _) => Crit::Any(items),
            _ => Crit::All(items),
        })
    }

    fn group(&mut self) -> Result<Crit, String> {
        self.expect('(')?;
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            let inner = self.list()?;
            self.expect(')')?;
            return Ok(inner);
        }
        // A condition: up to the first unescaped ')'.
        let mut raw = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => return Err("unbalanced parentheses".into()),
                Some('\\') => {
                    raw.push('\\');
                    if let Some(c) = self.chars.get(self.pos + 1) {
                        raw.push(*c);
                    }
                    self.pos += 2;
                }
                Some(')') => {
                    self.pos += 1;
                    break;
                }
                Some('(') => return Err("an unescaped '(' inside a condition".into()),
                Some(c) => {
                    raw.push(*c);
                    self.pos += 1;
                }
            }
        }
        self.condition(&raw)
    }

    fn condition(&self, raw: &str) -> Result<Crit, String> {
        // field:op:value, the value may hold further ':'.
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    current.push('\\');
                    if let Some(n) = chars.next() {
                        current.push(n);
                    }
                }
                ':' if parts.len() < 2 => parts.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        parts.push(current);
        let [field, op, value] = parts.as_slice() else {
            return Err(format!(
                "a condition must be field:operator:value, got {raw}"
            ));
        };
        let field = field.trim();
        let op = op.trim().to_ascii_lowercase();
        if !CRITERIA_OPS.contains(&op.as_str()) {
            return Err(format!("unsupported operator {op}"));
        }
        let known = SYSTEM_COLUMNS.iter().any(|c| c.eq_ignore_ascii_case(field))
            || self.module.field_ci(field).is_some();
        if !known {
            return Err(format!("unknown field {field}"));
        }
        let values = if op == "in" {
            split_unescaped(value, ',')
        } else {
            vec![unescape(value)]
        };
        Ok(Crit::Cond {
            field: field.to_owned(),
            op,
            values,
        })
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                current.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    out.push(current);
    out.into_iter().map(|v| v.trim().to_owned()).collect()
}

fn parse_criteria(s: &str, module: &Module) -> Result<Crit, String> {
    let mut p = CritParser {
        chars: s.chars().collect(),
        pos: 0,
        module,
    };
    let crit = p.list()?;
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(format!("unexpected text at position {}", p.pos));
    }
    Ok(crit)
}

/// The comparable text of a column of a record (`Owner` and lookups: the id).
fn column_text(record: &Map<String, Value>, name: &str) -> Option<String> {
    value_text(record.get(name))
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

fn crit_matches(crit: &Crit, module: &Module, record: &Map<String, Value>) -> bool {
    match crit {
        Crit::All(v) => v.iter().all(|c| crit_matches(c, module, record)),
        Crit::Any(v) => v.iter().any(|c| crit_matches(c, module, record)),
        Crit::Cond { field, op, values } => {
            let f = module.field_ci(field);
            let name = f.map_or(field.as_str(), |f| f.api_name.as_str());
            let Some(stored) = column_text(record, name) else {
                return op == "not_equal";
            };
            let lower = stored.to_lowercase();
            let phone = f.is_some_and(Field::is_phone);
            let text_like = f.is_some_and(|f| f.is_text_like() && !f.is_id_like());
            let exact = |v: &str| {
                lower == v.to_lowercase()
                    || (phone && !digits(v).is_empty() && digits(&stored) == digits(v))
            };
            let value = values.first().map(String::as_str).unwrap_or("");
            match op.as_str() {
                // Zoho: "equals" behaves like "contains" for text-like fields.
                "equals" if text_like => {
                    lower.contains(&value.to_lowercase())
                        || (phone
                            && !digits(value).is_empty()
                            && digits(&stored).contains(&digits(value)))
                }
                "equals" => exact(value),
                "not_equal" => !exact(value),
                "starts_with" => {
                    lower.starts_with(&value.to_lowercase())
                        || (phone
                            && !digits(value).is_empty()
                            && digits(&stored).starts_with(&digits(value)))
                }
                "in" => values.iter().any(|v| exact(v)),
                "greater_than" => compare(&stored, value).is_gt(),
                "greater_equal" => compare(&stored, value).is_ge(),
                "less_than" => compare(&stored, value).is_lt(),
                "less_equal" => compare(&stored, value).is_le(),
                _ => false,
            }
        }
    }
}

/// Whether a record matches a search.
type Matcher<'a> = Box<dyn Fn(&Map<String, Value>) -> bool + 'a>;

fn search(d: &Data, m: usize, req: &Req) -> R<Resp> {
    let q = req.query_pairs();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let module = &d.modules[m];
    let (page, per_page) = paging(&q)?;
    let matcher: Matcher<'_> = if let Some(criteria) = get("criteria") {
        let crit = parse_criteria(&criteria, module)
            .map_err(|reason| invalid_query("invalid query formed", json!({"reason": reason})))?;
        if crit.count() > 10 {
            return Err(invalid_query(
                "invalid query formed",
                json!({"reason": "at most 10 criteria are allowed"}),
            ));
        }
        Box::new(move |r| crit_matches(&crit, module, r))
    } else if let Some(email) = get("email") {
        let email = email.trim().to_lowercase();
        Box::new(move |r| {
            module
                .fields
                .iter()
                .filter(|f| f.data_type == "email")
                .any(|f| {
                    column_text(r, &f.api_name).is_some_and(|v| v.trim().to_lowercase() == email)
                })
        })
    } else if let Some(phone) = get("phone") {
        let wanted = digits(&phone);
        if wanted.len() < 2 {
            return Err(invalid_query(
                "the phone number given seems to be invalid",
                json!({"param_name": "phone"}),
            ));
        }
        Box::new(move |r| {
            module
                .fields
                .iter()
                .filter(|f| f.is_phone())
                .any(|f| column_text(r, &f.api_name).is_some_and(|v| digits(&v).contains(&wanted)))
        })
    } else if let Some(word) = get("word") {
        let word = word.trim().to_lowercase();
        if word.chars().count() < 2 {
            return Err(invalid_query(
                "the word should contain at least 2 characters",
                json!({"param_name": "word"}),
            ));
        }
        Box::new(move |r| {
            module.fields.iter().filter(|f| f.is_text_like()).any(|f| {
                r.get(&f.api_name)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.to_lowercase().contains(&word))
            })
        })
    } else {
        return Err(param_missing("criteria"));
    };
    let rows: Vec<Value> = module
        .records
        .iter()
        .filter(|r| r.indexed && matcher(&r.value))
        .map(|r| Value::Object(r.value.clone()))
        .collect();
    let total = rows.len().min(SEARCH_RESULT_CAP);
    let start = (page - 1).saturating_mul(per_page);
    if start >= SEARCH_RESULT_CAP && rows.len() > SEARCH_RESULT_CAP {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "LIMIT_REACHED",
            "search results exceed the limit",
            json!({"limit": SEARCH_RESULT_CAP}),
        ));
    }
    let rows: Vec<Value> = rows.into_iter().take(SEARCH_RESULT_CAP).collect();
    Ok(paged("data", rows, page, per_page, total))
}

// ---------------------------------------------------------------------------
// COQL

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            text.push(*n);
                        }
                        i += 2;
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        text.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        text.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(text));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '.'))
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars
                .get(i..i + 2)
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            let sym = match (two.as_str(), c) {
                ("!=", _) => "!=",
                ("<>", _) => "!=",
                ("<=", _) => "<=",
                (">=", _) => ">=",
                (_, '=') => "=",
                (_, '<') => "<",
                (_, '>') => ">",
                (_, ',') => ",",
                (_, '(') => "(",
                (_, ')') => ")",
                (_, '*') => "*",
                _ => return Err(format!("unexpected character '{c}'")),
            };
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    NotLike,
    IsNull,
    NotNull,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        column: String,
        op: CmpOp,
        values: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Query {
    columns: Vec<String>,
    module: String,
    filter: Option<Expr>,
    order: Vec<(String, bool)>,
    offset: usize,
    limit: usize,
}

struct CoqlParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl CoqlParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.is_kw(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw} near {}", self.near()))
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let hit = matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn near(&self) -> String {
        match self.peek() {
            None => "the end".into(),
            Some(Tok::Word(w) | Tok::Num(w)) => w.clone(),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Sym(s)) => (*s).to_owned(),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        const RESERVED: &[&str] = &[
            "select", "from", "where", "and", "or", "like", "not", "is", "null", "in", "limit",
            "offset", "order", "by",
        ];
        match self.peek() {
            Some(Tok::Word(w)) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(format!(
                "expected a column or module name near {}",
                self.near()
            )),
        }
    }

    fn number(&mut self) -> Result<usize, String> {
        match self.peek() {
            Some(Tok::Num(n)) => {
                let v = n.parse().map_err(|_| format!("invalid number {n}"))?;
                self.pos += 1;
                Ok(v)
            }
            _ => Err(format!("expected a number near {}", self.near())),
        }
    }

    fn literal(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Str(s) | Tok::Num(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(format!("expected a value near {}", self.near())),
        }
    }

    fn query(&mut self) -> Result<Query, String> {
        self.expect_kw("select")?;
        if self.eat_sym("*") {
            return Err("select * is not supported; name the columns".into());
        }
        let mut columns = vec![self.ident()?];
        while self.eat_sym(",") {
            columns.push(self.ident()?);
        }
        self.expect_kw("from")?;
        let module = self.ident()?;
        let filter = if self.eat_kw("where") {
            Some(self.or_expr()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_kw("order") {
            self.expect_kw("by")?;
            loop {
                let column = self.ident()?;
                let desc = if self.eat_kw("desc") {
                    true
                } else {
                    self.eat_kw("asc");
                    false
                };
                order.push((column, desc));
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let (mut offset, mut limit) = (0, MAX_PER_PAGE);
        if self.eat_kw("limit") {
            let first = self.number()?;
            if self.eat_sym(",") {
                offset = first;
                limit = self.number()?;
            } else {
                limit = first;
            }
        }
        if self.eat_kw("offset") {
            offset = self.number()?;
        }
        if self.pos != self.toks.len() {
            return Err(format!("unexpected {}", self.near()));
        }
        Ok(Query {
            columns,
            module,
            filter,
            order,
            offset,
            limit,
        })
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.eat_kw("or") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        while self.eat_kw("and") {
            let right = self.atom()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        if self.eat_sym("(") {
            let e = self.or_expr()?;
            if !self.eat_sym(")") {
                return Err(format!("expected ) near {}", self.near()));
            }
            return Ok(e);
        }
        let column = self.ident()?;
        let cmp = |op: CmpOp, values: Vec<String>| Expr::Cmp {
            column: column.clone(),
            op,
            values,
        };
        for (sym, op) in [
            ("=", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ] {
            if self.eat_sym(sym) {
                return Ok(cmp(op, vec![self.literal()?]));
            }
        }
        if self.eat_kw("like") {
            return Ok(cmp(CmpOp::Like, vec![self.literal()?]));
        }
        if self.eat_kw("is") {
            let not = self.eat_kw("not");
            self.expect_kw("null")?;
            return Ok(cmp(
                if not { CmpOp::NotNull } else { CmpOp::IsNull },
                vec![],
            ));
        }
        let not = self.eat_kw("not");
        if not && self.eat_kw("like") {
            return Ok(cmp(CmpOp::NotLike, vec![self.literal()?]));
        }
        if self.eat_kw("in") {
            if !self.eat_sym("(") {
                return Err(format!("expected ( near {}", self.near()));
            }
            let mut values = vec![self.literal()?];
            while self.eat_sym(",") {
                values.push(self.literal()?);
            }
            if !self.eat_sym(")") {
                return Err(format!("expected ) near {}", self.near()));
            }
            return Ok(cmp(if not { CmpOp::NotIn } else { CmpOp::In }, values));
        }
        Err(format!("expected a comparison near {}", self.near()))
    }
}

/// SQL `like` with `%` wildcards, case-insensitive.
fn like(text: &str, pattern: &str) -> bool {
    let text = text.to_lowercase();
    let pattern = pattern.to_lowercase();
    let parts: Vec<&str> = pattern.split('%').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return text == pattern;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A `like` pattern reduced to its digits and `%` (for phone fields).
fn digit_pattern(pattern: &str) -> String {
    pattern
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '%')
        .collect()
}

fn eval(e: &Expr, module: &Module, record: &Map<String, Value>) -> bool {
    match e {
        Expr::And(a, b) => eval(a, module, record) && eval(b, module, record),
        Expr::Or(a, b) => eval(a, module, record) || eval(b, module, record),
        Expr::Cmp { column, op, values } => {
            let phone = module.field(column).is_some_and(Field::is_phone);
            let stored = column_text(record, column).filter(|s| !s.is_empty());
            let value = values.first().map(String::as_str).unwrap_or("");
            let Some(stored) = stored else {
                return matches!(op, CmpOp::IsNull);
            };
            let equal = |v: &str| {
                stored.trim().to_lowercase() == v.trim().to_lowercase()
                    || (phone && !digits(v).is_empty() && digits(&stored) == digits(v))
            };
            let liked = |p: &str| {
                like(&stored, p) || {
                    let dp = digit_pattern(p);
                    phone && dp.chars().any(|c| c.is_ascii_digit()) && like(&digits(&stored), &dp)
                }
            };
            match op {
                CmpOp::Eq => equal(value),
                CmpOp::Ne => !equal(value),
                CmpOp::Lt => compare(&stored, value).is_lt(),
                CmpOp::Le => compare(&stored, value).is_le(),
                CmpOp::Gt => compare(&stored, value).is_gt(),
                CmpOp::Ge => compare(&stored, value).is_ge(),
                CmpOp::Like => liked(value),
                CmpOp::NotLike => !liked(value),
                CmpOp::IsNull => false,
                CmpOp::NotNull => true,
                CmpOp::In => values.iter().any(|v| equal(v)),
                CmpOp::NotIn => !values.iter().any(|v| equal(v)),
            }
        }
    }
}

fn syntax_error(message: &str) -> Resp {
    api_error(StatusCode::BAD_REQUEST, "SYNTAX_ERROR", message, json!({}))
}

/// The column's canonical name in `module`, or the `INVALID_QUERY` answer.
fn resolve_column(module: &Module, name: &str, clause: &str) -> R<String> {
    if let Some(c) = SYSTEM_COLUMNS.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Ok((*c).to_owned());
    }
    module.field_ci(name).map(|f| f.api_name.clone()).ok_or_else(|| {
        invalid_query(
            "Invalid query formed",
            json!({"reason": "column given seems to be invalid", "column_name": name, "clause": clause}),
        )
    })
}

fn resolve_expr(e: &mut Expr, module: &Module) -> R<()> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            resolve_expr(a, module)?;
            resolve_expr(b, module)
        }
        Expr::Cmp { column, .. } => {
            *column = resolve_column(module, column, "where")?;
            Ok(())
        }
    }
}

fn coql(d: &Data, req: &Req) -> R<Resp> {
    let body: Value = serde_json::from_slice(&req.body).map_err(|_| {
        api_error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "body is not a valid JSON",
            json!({}),
        )
    })?;
    let text = body
        .get("select_query")
        .and_then(Value::as_str)
        .ok_or_else(|| param_missing("select_query"))?;
    let toks = tokenize(text).map_err(|e| syntax_error(&e))?;
    let mut query = CoqlParser { toks, pos: 0 }
        .query()
        .map_err(|e| syntax_error(&e))?;
    let m = d.module_idx(&query.module).ok_or_else(|| {
        invalid_query(
            "Invalid query formed",
            json!({"reason": "the module name given seems to be invalid", "clause": "from"}),
        )
    })?;
    let module = &d.modules[m];
    let columns: Vec<String> = query
        .columns
        .iter()
        .map(|c| resolve_column(module, c, "select"))
        .collect::<R<_>>()?;
    if let Some(filter) = query.filter.as_mut() {
        resolve_expr(filter, module)?;
    }
    for (column, _) in query.order.iter_mut() {
        *column = resolve_column(module, column, "order by")?;
    }
    if query.limit == 0 || query.limit > COQL_MAX_LIMIT {
        return Err(invalid_query(
            "Invalid query formed",
            json!({"reason": format!("limit must be 1 to {COQL_MAX_LIMIT}"), "clause": "limit"}),
        ));
    }
    let mut hits: Vec<&Stored> = module
        .records
        .iter()
        .filter(|r| {
            query
                .filter
                .as_ref()
                .is_none_or(|f| eval(f, module, &r.value))
        })
        .collect();
    for (column, desc) in query.order.iter().rev() {
        hits.sort_by(|a, b| {
            let (x, y) = (
                column_text(&a.value, column).unwrap_or_default(),
                column_text(&b.value, column).unwrap_or_default(),
            );
            let o = compare(&x, &y);
            if *desc { o.reverse() } else { o }
        });
    }
    let total = hits.len();
    let rows: Vec<Value> = hits
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|r| {
            let mut row = Map::new();
            row.insert("id".into(), json!(r.id()));
            for c in &columns {
                row.insert(c.clone(), r.value.get(c).cloned().unwrap_or(Value::Null));
            }
            Value::Object(row)
        })
        .collect();
    if rows.is_empty() {
        return Ok(no_content());
    }
    let more = query.offset + rows.len() < total;
    Ok(Resp::json(
        StatusCode::OK,
        &json!({"data": rows, "info": {"count": rows.len(), "more_records": more}}),
    ))
}

impl Vendor for ZohoVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => {
                let limit = lock(&self.0.data)
                    .credit_limit
                    .unwrap_or(DEFAULT_LIMIT_HEADER);
                too_many(Some(limit), soon_ms())
            }
            _ => api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "Internal Server Error",
                json!({}),
            ),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::oauth::{FakeOAuth, OAuthConfig};

    struct Api {
        _oauth: FakeOAuth,
        zoho: FakeZoho,
        token: String,
    }

    async fn setup() -> Api {
        let oauth = FakeOAuth::start(OAuthConfig::zoho("cid", "secret"))
            .await
            .unwrap();
        let zoho = FakeZoho::start(oauth.token_checker()).await.unwrap();
        oauth.set_api_domain(&zoho.base_url());
        let token = oauth.issue_access_token();
        Api {
            _oauth: oauth,
            zoho,
            token,
        }
    }

    /// (status, JSON body or Null when empty, raw body, headers)
    async fn raw(
        base: &str,
        auth: Option<&str>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value, String, reqwest::header::HeaderMap) {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{base}{path}"))
            .query(query);
        if let Some(auth) = auth {
            rb = rb.header("Authorization", auth);
        }
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, json, text, headers)
    }

    impl Api {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            query: &[(&str, &str)],
            body: Option<Value>,
        ) -> (u16, Value) {
            let auth = format!("Zoho-oauthtoken {}", self.token);
            let (status, json, _, _) = raw(
                &self.zoho.base_url(),
                Some(&auth),
                method,
                path,
                query,
                body,
            )
            .await;
            (status, json)
        }

        async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
            self.call(reqwest::Method::GET, path, query, None).await
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::POST, path, &[], Some(body))
                .await
        }

        async fn put(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::PUT, path, &[], Some(body)).await
        }

        async fn coql(&self, query: &str) -> (u16, Value) {
            self.post("/crm/v7/coql", json!({"select_query": query}))
                .await
        }
    }

    fn ids(body: &Value) -> Vec<String> {
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn versions_like_and_criteria_parse() {
        for ok in ["v2", "v2.1", "v7", "v8", "v10.25"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["v", "v7.", "7", "V7", "v7.1.2", "va", "v.1"] {
            assert!(!valid_version(bad), "{bad}");
        }
        assert!(like("380671234567", "%671234567"));
        assert!(like("Ivan", "iv%"));
        assert!(like("abcde", "a%c%e"));
        assert!(!like("abc", "a%c%e"));
        assert!(like("x", "%"));
        assert!(!like("ab", "ab%b"));
        let d = Data::new();
        let leads = &d.modules[0];
        let c = parse_criteria(
            r"((Last_Name:equals:O\(Neil\)\, Jr)and(Email:starts_with:a))",
            leads,
        )
        .unwrap();
        assert_eq!(c.count(), 2);
        let Crit::All(items) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            items[0],
            Crit::Cond {
                field: "Last_Name".into(),
                op: "equals".into(),
                values: vec!["O(Neil), Jr".into()]
            }
        );
        assert!(parse_criteria("(Phone:in:1,2\\,3)", leads).is_ok());
        for bad in [
            "Last_Name:equals:x",
            "(Last_Name:equals:x",
            "(Last_Name:equals)",
            "(Nope:equals:x)",
            "(Last_Name:sounds_like:x)",
            "((A:equals:x)and(B:equals:y)or(C:equals:z))",
        ] {
            assert!(parse_criteria(bad, leads).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn oauth_api_domain_auth_and_versions() {
        let oauth = FakeOAuth::start(OAuthConfig::zoho("cid", "secret"))
            .await
            .unwrap();
        let zoho = FakeZoho::start(oauth.token_checker()).await.unwrap();
        oauth.set_api_domain(&zoho.base_url());
        let refresh = oauth.issue_refresh_token();
        let tokens: Value = reqwest::Client::new()
            .post(format!("{}/oauth/v2/token", oauth.base_url()))
            .query(&[
                ("refresh_token", refresh.as_str()),
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("grant_type", "refresh_token"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let api = tokens["api_domain"].as_str().unwrap().to_owned();
        assert_eq!(api, zoho.base_url());
        let token = tokens["access_token"].as_str().unwrap().to_owned();
        let get = reqwest::Method::GET;

        let auth = format!("Zoho-oauthtoken {token}");
        for version in ["v2", "v2.1", "v7", "v8"] {
            let (status, body, _, _) = raw(
                &api,
                Some(&auth),
                get.clone(),
                &format!("/crm/{version}/org"),
                &[],
                None,
            )
            .await;
            assert_eq!(status, 200, "{version}");
            assert_eq!(body["org"][0]["company_name"], json!("Fake Org"));
            assert_eq!(body["org"][0]["time_zone"], json!("Europe/Kiev"));
        }
        let lower = format!("zoho-oauthtoken {token}");
        assert_eq!(
            raw(&api, Some(&lower), get.clone(), "/crm/v7/org", &[], None)
                .await
                .0,
            200
        );

        let failure = json!({"code": "AUTHENTICATION_FAILURE", "details": {}, "message": "Authentication failed", "status": "error"});
        for auth in [
            None,
            Some(format!("Bearer {token}")),
            Some("Zoho-oauthtoken".to_owned()),
        ] {
            let (status, body, _, _) =
                raw(&api, auth.as_deref(), get.clone(), "/crm/v7/org", &[], None).await;
            assert_eq!((status, body), (401, failure.clone()), "{auth:?}");
        }
        let invalid = json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"});
        let (status, body, _, _) = raw(
            &api,
            Some("Zoho-oauthtoken fake-at-unknown"),
            get.clone(),
            "/crm/v7/org",
            &[],
            None,
        )
        .await;
        assert_eq!((status, body), (401, invalid.clone()));

        let not_found = json!({"code": "INVALID_URL_PATTERN", "details": {}, "message": "Please check if the URL trying to access is a correct one", "status": "error"});
        for path in [
            "/crm/x7/org",
            "/crm/v7./org",
            "/crm/v7",
            "/api/v7/org",
            "/crm/v7/org/extra/x",
        ] {
            let (status, body, _, _) = raw(&api, Some(&auth), get.clone(), path, &[], None).await;
            assert_eq!((status, body), (404, not_found.clone()), "{path}");
        }
        let (status, body, _, _) = raw(
            &api,
            Some(&auth),
            reqwest::Method::DELETE,
            "/crm/v7/org",
            &[],
            None,
        )
        .await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_REQUEST_METHOD"))
        );

        // Only authenticated requests cost credits: 4 versions, lowercase,
        // DELETE, and the unknown path under a valid version (checked after
        // the token); the 401s and the malformed prefixes cost nothing.
        assert_eq!(zoho.credits_used(), 7);

        oauth.expire_access_tokens();
        let (status, body, _, _) = raw(&api, Some(&auth), get, "/crm/v7/org", &[], None).await;
        assert_eq!((status, body), (401, invalid));

        let log = format!("{:?}", zoho.requests());
        assert!(!log.contains(&token));
        assert_eq!(zoho.requests()[0].header("authorization"), Some("***"));
    }

    #[tokio::test]
    async fn users_and_field_metadata() {
        let api = setup().await;
        let z = &api.zoho;
        let anna = z.add_user("anna@example.com", "Anna Koval", "active");
        z.add_user("old@example.com", "Old Timer", "disabled");
        assert_eq!(z.user_id("ANNA@example.com"), Some(anna.clone()));
        assert_eq!(z.user_id("nobody@example.com"), None);

        let (status, body) = api.get("/crm/v7/users", &[("type", "ActiveUsers")]).await;
        assert_eq!(status, 200);
        let emails: Vec<&str> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap())
            .collect();
        assert_eq!(emails, vec![ADMIN_EMAIL, "anna@example.com"]);
        let user = &body["users"][1];
        assert_eq!(user["id"], json!(anna));
        assert_eq!(user["id"].as_str().unwrap().len(), 19);
        assert_eq!(
            (user["first_name"].clone(), user["last_name"].clone()),
            (json!("Anna"), json!("Koval"))
        );
        assert_eq!(user["status"], json!("active"));
        assert_eq!(user["confirm"], json!(true));
        assert!(user["role"]["name"].is_string() && user["profile"]["id"].is_string());
        assert_eq!(
            body["info"],
            json!({"per_page": 200, "count": 2, "page": 1, "more_records": false})
        );

        let (_, body) = api.get("/crm/v7/users", &[]).await;
        assert_eq!(body["users"].as_array().unwrap().len(), 3);
        let (_, body) = api.get("/crm/v7/users", &[("type", "AdminUsers")]).await;
        assert_eq!(body["users"][0]["profile"]["name"], json!("Administrator"));
        assert_eq!(body["users"].as_array().unwrap().len(), 1);
        let (_, body) = api.get("/crm/v7/users", &[("type", "CurrentUser")]).await;
        assert_eq!(body["users"][0]["email"], json!(ADMIN_EMAIL));
        let (_, body) = api
            .get(
                "/crm/v7/users",
                &[("type", "AllUsers"), ("page", "2"), ("per_page", "2")],
            )
            .await;
        assert_eq!(body["users"][0]["email"], json!("old@example.com"));
        assert_eq!(body["info"]["more_records"], json!(false));
        let (_, body) = api
            .get("/crm/v7/users", &[("page", "1"), ("per_page", "2")])
            .await;
        assert_eq!(body["info"]["more_records"], json!(true));
        let auth = format!("Zoho-oauthtoken {}", api.token);
        let (status, _, text, _) = raw(
            &z.base_url(),
            Some(&auth),
            reqwest::Method::GET,
            "/crm/v7/users",
            &[("page", "3"), ("per_page", "2")],
            None,
        )
        .await;
        assert_eq!((status, text.as_str()), (204, ""));
        let (status, body) = api.get("/crm/v7/users", &[("per_page", "201")]).await;
        assert_eq!((status, body["code"].clone()), (400, json!("INVALID_DATA")));
        assert!(z.set_user_status("anna@example.com", "disabled"));
        let (_, body) = api.get("/crm/v7/users", &[("type", "ActiveUsers")]).await;
        assert_eq!(body["users"].as_array().unwrap().len(), 1);

        let (status, body) = api
            .get("/crm/v7/settings/fields", &[("module", "Leads")])
            .await;
        assert_eq!(status, 200);
        let fields = body["fields"].as_array().unwrap();
        let field = |name: &str| fields.iter().find(|f| f["api_name"] == name).cloned();
        let last = field("Last_Name").unwrap();
        assert_eq!(last["system_mandatory"], json!(true));
        assert_eq!(last["custom_field"], json!(false));
        assert_eq!(last["data_type"], json!("text"));
        assert_eq!(field("Phone").unwrap()["data_type"], json!("phone"));
        assert_eq!(field("Owner").unwrap()["data_type"], json!("ownerlookup"));
        assert!(field("Lead_Source").unwrap()["pick_list_values"].is_array());
        for name in RINGOSTAT_LEAD_FIELDS {
            let f = field(name).unwrap();
            assert_eq!(f["custom_field"], json!(true));
            assert_eq!(f["field_label"], json!(name));
            assert_eq!(f["length"], json!(255));
        }
        assert!(z.remove_field("Leads", "rs_utm_term"));
        assert!(!z.remove_field("Leads", "rs_utm_term"));
        assert!(!z.remove_field("Nope", "Phone"));
        let (_, body) = api
            .get("/crm/v2/settings/fields", &[("module", "Leads")])
            .await;
        assert!(
            !body["fields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["api_name"] == "rs_utm_term")
        );
        z.add_custom_field("Deals", "rs_utm_source").unwrap();
        assert!(z.add_custom_field("Deals", "rs_utm_source").is_err());
        assert!(
            z.fields("Deals")
                .iter()
                .any(|f| f["api_name"] == "rs_utm_source")
        );
        let (_, body) = api
            .get("/crm/v7/settings/fields", &[("module", "Calls")])
            .await;
        let mandatory: Vec<&str> = body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["system_mandatory"] == json!(true))
            .map(|f| f["api_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            mandatory,
            vec!["Subject", "Call_Type", "Call_Start_Time", "Call_Duration"]
        );

        let (status, body) = api
            .get("/crm/v7/settings/fields", &[("module", "Accounts")])
            .await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"code": "INVALID_MODULE", "details": {}, "message": "the module name given seems to be invalid", "status": "error"})
            )
        );
        let (status, body) = api.get("/crm/v7/settings/fields", &[]).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], json!("REQUIRED_PARAM_MISSING"));
        assert_eq!(body["details"], json!({"param_name": "module"}));
    }

    #[tokio::test]
    async fn insert_checks_each_record() {
        let api = setup().await;
        let z = &api.zoho;
        let anna = z.add_user("anna@example.com", "Anna Koval", "active");
        let gone = z.add_user("gone@example.com", "Gone User", "disabled");

        let (status, body) = api
            .post(
                "/crm/v7/Leads",
                json!({"data": [{"Last_Name": "Shevchenko", "First_Name": "Taras", "Phone": "+380671234567",
                                  "Owner": {"id": anna}, "rs_utm_source": "google", "Full_Name": "ignored"}],
                       "trigger": ["workflow"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let item = &body["data"][0];
        assert_eq!(item["code"], json!("SUCCESS"));
        assert_eq!(item["message"], json!("record added"));
        assert_eq!(item["status"], json!("success"));
        let id = item["details"]["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 19);
        assert!(id.chars().all(|c| c.is_ascii_digit()));
        assert!(
            DateTime::parse_from_rfc3339(item["details"]["Created_Time"].as_str().unwrap()).is_ok()
        );
        assert_eq!(
            item["details"]["Created_By"]["id"],
            json!(z.user_id(ADMIN_EMAIL).unwrap())
        );
        let lead = z.record("Leads", &id).unwrap();
        assert_eq!(
            lead["Owner"],
            json!({"id": anna, "name": "Anna Koval", "email": "anna@example.com"})
        );
        assert_eq!(lead["Full_Name"], json!("Taras Shevchenko"));
        assert_eq!(lead["rs_utm_source"], json!("google"));
        assert_eq!(lead["Phone"], json!("+380671234567"));

        // Mixed batch: 207, one item per record, in order.
        let (status, body) = api
            .post(
                "/crm/v7/Leads",
                json!({"data": [{"Last_Name": "Ok"}, {"First_Name": "No last name"}, {"Last_Name": "X", "Nope": 1},
                                 {"Last_Name": "X", "id": "1"}, {"Last_Name": "X", "Owner": {"id": gone}},
                                 {"Last_Name": "X", "Email": "not-an-email"}, {"Last_Name": "X", "Phone": 380671234567u64},
                                 {"Last_Name": "x".repeat(81)}, {"Last_Name": "X", "$approved": true}]}),
            )
            .await;
        assert_eq!(status, 207, "{body}");
        let items = body["data"].as_array().unwrap();
        assert_eq!(items.len(), 9);
        assert_eq!(items[0]["code"], json!("SUCCESS"));
        assert_eq!(
            items[1],
            json!({"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"}, "message": "required field not found", "status": "error"})
        );
        assert_eq!(
            items[2],
            json!({"code": "INVALID_DATA", "details": {"api_name": "Nope", "json_path": "$.data[2].Nope"}, "message": "invalid data", "status": "error"})
        );
        for (i, name) in [
            (3, "id"),
            (4, "Owner"),
            (5, "Email"),
            (6, "Phone"),
            (7, "Last_Name"),
        ] {
            assert_eq!(items[i]["code"], json!("INVALID_DATA"), "{i}");
            assert_eq!(items[i]["details"]["api_name"], json!(name), "{i}");
        }
        assert_eq!(items[7]["details"]["maximum_length"], json!(80));
        assert_eq!(items[8]["code"], json!("SUCCESS"));
        assert_eq!(z.records("Leads").len(), 3);
        // Owner defaults to the administrator.
        assert_eq!(z.records("Leads")[1]["Owner"]["email"], json!(ADMIN_EMAIL));

        let (status, body) = api
            .post("/crm/v7/Leads", json!({"data": [{"First_Name": "x"}]}))
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["data"][0]["code"], json!("MANDATORY_NOT_FOUND"));

        // Request-level errors.
        let many: Vec<Value> = (0..101)
            .map(|i| json!({"Last_Name": format!("L{i}")}))
            .collect();
        let (status, body) = api.post("/crm/v7/Leads", json!({"data": many})).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("LIMIT_EXCEEDED"))
        );
        let (status, body) = api.post("/crm/v7/Leads", json!({"records": []})).await;
        assert_eq!((status, body["code"].clone()), (400, json!("INVALID_DATA")));
        let auth = format!("Zoho-oauthtoken {}", api.token);
        let resp = reqwest::Client::new()
            .post(format!("{}/crm/v7/Leads", z.base_url()))
            .header("Authorization", auth)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], json!("INVALID_DATA"));
        let (status, body) = api.post("/crm/v7/Accounts", json!({"data": [{}]})).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_MODULE"))
        );
        assert_eq!(z.records("Leads").len(), 3);

        // Deals, Tasks and Calls: mandatory fields and lookups.
        let contact = z
            .insert_record(
                "Contacts",
                json!({"Last_Name": "Koval", "Phone": "+380 50 111 22 33"}),
            )
            .unwrap();
        let (status, body) = api
            .post(
                "/crm/v7/Deals",
                json!({"data": [{"Deal_Name": "D1", "Stage": "Qualification", "Contact_Name": {"id": contact}, "Amount": 100.5},
                                 {"Deal_Name": "D2"},
                                 {"Deal_Name": "D3", "Stage": "Qualification", "Contact_Name": {"id": id}},
                                 {"Deal_Name": "D4", "Stage": "Qualification", "Closing_Date": "31.12.2026"}]}),
            )
            .await;
        assert_eq!(status, 207);
        assert_eq!(body["data"][0]["code"], json!("SUCCESS"));
        assert_eq!(body["data"][1]["details"]["api_name"], json!("Stage"));
        assert_eq!(
            body["data"][2]["details"]["api_name"],
            json!("Contact_Name")
        );
        assert_eq!(
            body["data"][3]["details"]["api_name"],
            json!("Closing_Date")
        );
        let deal = body["data"][0]["details"]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let call = |extra: Value| {
            let mut c = json!({"Subject": "Incoming call", "Call_Type": "Inbound",
                               "Call_Start_Time": "2026-04-25T16:07:14+03:00", "Call_Duration": "01:35"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let (status, body) = api
            .post(
                "/crm/v7/Calls",
                json!({"data": [
                    call(json!({"What_Id": {"id": id}, "$se_module": "Leads", "Who_Id": {"id": contact}})),
                    call(json!({"What_Id": {"id": deal}})),
                    call(json!({"What_Id": {"id": id}})),
                    call(json!({"Call_Start_Time": "2026-04-25 16:07:14"})),
                    call(json!({"Call_Type": "Incoming"})),
                    call(json!({"What_Id": {"id": id}, "$se_module": "Nope"})),
                    call(json!({"Who_Id": {"id": "123"}})),
                ]}),
            )
            .await;
        assert_eq!(status, 207, "{body}");
        let codes: Vec<(String, String)> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["code"].as_str().unwrap().to_owned(),
                    i["details"]["api_name"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("SUCCESS", ""),
            ("SUCCESS", ""),
            ("INVALID_DATA", "What_Id"),
            ("INVALID_DATA", "Call_Start_Time"),
            ("INVALID_DATA", "Call_Type"),
            ("INVALID_DATA", "$se_module"),
            ("INVALID_DATA", "Who_Id"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(codes, expected);
        let stored = &z.records("Calls")[0];
        assert_eq!(stored["$se_module"], json!("Leads"));
        assert_eq!(stored["What_Id"], json!({"id": id}));
        let (status, body) = api
            .post(
                "/crm/v7/Calls",
                json!({"data": [{"Subject": "s", "Call_Type": "Missed"}]}),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["data"][0]["details"]["api_name"],
            json!("Call_Start_Time")
        );
        let (status, _) = api
            .post("/crm/v7/Tasks", json!({"data": [{"Subject": "Call back", "Status": "Not Started", "Due_Date": "2026-04-26",
                                                    "What_Id": {"id": id}, "$se_module": "Leads"}]}))
            .await;
        assert_eq!(status, 201);
    }

    #[tokio::test]
    async fn unique_fields_reject_duplicates() {
        let api = setup().await;
        let z = &api.zoho;
        z.set_unique("Leads", "Phone").unwrap();
        z.set_unique("Leads", "Email").unwrap();
        assert!(z.set_unique("Leads", "Nope").is_err());
        assert!(z.set_unique("Nope", "Phone").is_err());
        let first = z
            .insert_record(
                "Leads",
                json!({"Last_Name": "A", "Phone": "+38 (067) 123-45-67", "Email": "A@Example.com"}),
            )
            .unwrap();
        let (status, body) = api
            .post(
                "/crm/v7/Leads",
                json!({"data": [{"Last_Name": "B", "Phone": "380671234567"},
                                 {"Last_Name": "C", "Email": "a@example.COM"},
                                 {"Last_Name": "D", "Phone": "380500000000"},
                                 {"Last_Name": "E", "Phone": "+380500000000"}]}),
            )
            .await;
        assert_eq!(status, 207);
        let leads_id = &z.inner.data.lock().unwrap().modules[0].id.clone();
        assert_eq!(
            body["data"][0],
            json!({"code": "DUPLICATE_DATA", "details": {"api_name": "Phone", "json_path": "$.data[0].Phone",
                   "duplicate_record": {"id": first, "module": {"api_name": "Leads", "id": leads_id}}},
                   "message": "duplicate data", "status": "error"})
        );
        assert_eq!(body["data"][1]["details"]["api_name"], json!("Email"));
        assert_eq!(body["data"][2]["code"], json!("SUCCESS"));
        // Records earlier in the same batch count.
        assert_eq!(body["data"][3]["code"], json!("DUPLICATE_DATA"));
        assert_eq!(z.records("Leads").len(), 2);
    }

    #[tokio::test]
    async fn update_upsert_and_get() {
        let api = setup().await;
        let z = &api.zoho;
        z.set_unique("Leads", "Email").unwrap();
        let (status, body) = api
            .post(
                "/crm/v7/Leads/upsert",
                json!({"data": [{"Last_Name": "Koval", "Email": "k@example.com", "Phone": "111"}]}),
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(body["data"][0]["action"], json!("insert"));
        assert_eq!(body["data"][0]["message"], json!("record added"));
        let id = body["data"][0]["details"]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let (status, body) = api
            .post(
                "/crm/v7/Leads/upsert",
                json!({"data": [{"Last_Name": "Koval-Updated", "Email": "K@example.com"}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["action"], json!("update"));
        assert_eq!(body["data"][0]["message"], json!("record updated"));
        assert_eq!(body["data"][0]["duplicate_field"], json!("Email"));
        assert_eq!(body["data"][0]["details"]["id"], json!(id));
        assert_eq!(z.records("Leads").len(), 1);
        assert_eq!(
            z.record("Leads", &id).unwrap()["Last_Name"],
            json!("Koval-Updated")
        );
        assert_eq!(z.record("Leads", &id).unwrap()["Phone"], json!("111"));

        let (status, body) = api
            .post(
                "/crm/v7/Leads/upsert",
                json!({"data": [{"Last_Name": "P", "Phone": "111", "Mobile": "222"}, {"Last_Name": "Q", "Phone": "999"}],
                       "duplicate_check_fields": ["Phone"]}),
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(body["data"][0]["action"], json!("update"));
        assert_eq!(body["data"][1]["action"], json!("insert"));
        assert_eq!(z.record("Leads", &id).unwrap()["Mobile"], json!("222"));
        let (status, body) = api
            .post(
                "/crm/v7/Leads/upsert",
                json!({"data": [{"Last_Name": "P"}], "duplicate_check_fields": ["Nope"]}),
            )
            .await;
        assert_eq!((status, body["code"].clone()), (400, json!("INVALID_DATA")));

        let (status, body) = api
            .put(
                &format!("/crm/v7/Leads/{id}"),
                json!({"data": [{"Lead_Status": "Contacted", "First_Name": "Ivan"}]}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["data"][0]["code"], json!("SUCCESS"));
        assert_eq!(body["data"][0]["message"], json!("record updated"));
        let lead = z.record("Leads", &id).unwrap();
        assert_eq!(lead["Full_Name"], json!("Ivan P"));
        assert_eq!(lead["Lead_Status"], json!("Contacted"));

        let (status, body) = api
            .put(
                "/crm/v7/Leads/5725767000000000000",
                json!({"data": [{"Last_Name": "x"}]}),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["data"][0],
            json!({"code": "INVALID_DATA", "details": {"id": "5725767000000000000"}, "message": "the related id given seems to be invalid", "status": "error"})
        );
        let (status, body) = api
            .put(
                &format!("/crm/v7/Leads/{id}"),
                json!({"data": [{"Last_Name": ""}]}),
            )
            .await;
        assert_eq!(
            (status, body["data"][0]["code"].clone()),
            (400, json!("MANDATORY_NOT_FOUND"))
        );
        let (status, body) = api
            .put(
                &format!("/crm/v7/Leads/{id}"),
                json!({"data": [{"Bogus": "x"}]}),
            )
            .await;
        assert_eq!(
            (status, body["data"][0]["details"]["api_name"].clone()),
            (400, json!("Bogus"))
        );

        let (status, body) = api
            .put(
                "/crm/v7/Leads",
                json!({"data": [{"id": id, "Company": "Acme"}, {"Company": "no id"}]}),
            )
            .await;
        assert_eq!(status, 207);
        assert_eq!(body["data"][1]["details"]["api_name"], json!("id"));

        let (status, body) = api.get(&format!("/crm/v7/Leads/{id}"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"][0]["Company"], json!("Acme"));
        assert_eq!(body["data"][0]["Owner"]["email"], json!(ADMIN_EMAIL));
        let (status, body) = api.get("/crm/v7/Leads/5725767000000000000", &[]).await;
        assert_eq!((status, body), (204, Value::Null));
        let (status, body) = api
            .get("/crm/v7/Leads", &[("per_page", "1"), ("page", "2")])
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["info"]["more_records"], json!(false));
    }

    #[tokio::test]
    async fn search_matches_loosely_and_lags() {
        let api = setup().await;
        let z = &api.zoho;
        let a = z
            .insert_record("Leads", json!({"Last_Name": "Shevchenko", "First_Name": "Taras", "Phone": "+38 (067) 123-45-67",
                                         "Email": "Taras@Example.com", "Company": "Kobzar LLC"}))
            .unwrap();
        let b = z
            .insert_record(
                "Leads",
                json!({"Last_Name": "Ukrainka", "Mobile": "0671234567", "Company": "Lesya Ltd"}),
            )
            .unwrap();
        let c = z
            .insert_record(
                "Leads",
                json!({"Last_Name": "Franko", "Phone": "+380 44 000 00 00"}),
            )
            .unwrap();

        let search = |q: Vec<(&'static str, String)>| {
            let api = &api;
            async move {
                let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
                api.get("/crm/v7/Leads/search", &pairs).await
            }
        };
        // Phone: every phone field whose digits contain the query's digits.
        let (status, body) = search(vec![("phone", "671234567".into())]).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&body), vec![a.clone(), b.clone()]);
        assert_eq!(
            body["info"],
            json!({"per_page": 200, "count": 2, "page": 1, "more_records": false})
        );
        let (_, body) = search(vec![("phone", "+380671234567".into())]).await;
        assert_eq!(ids(&body), vec![a.clone()]);
        let (status, body) = search(vec![("phone", "7".into())]).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_QUERY"))
        );

        let (_, body) = search(vec![("email", "taras@example.COM".into())]).await;
        assert_eq!(ids(&body), vec![a.clone()]);
        let (status, body) = search(vec![("email", "taras@example".into())]).await;
        assert_eq!((status, body), (204, Value::Null));

        let (_, body) = search(vec![("word", "ltd".into())]).await;
        assert_eq!(ids(&body), vec![b.clone()]);
        let (status, _) = search(vec![("word", "l".into())]).await;
        assert_eq!(status, 400);

        // criteria wins over the others; equals behaves like contains.
        let (_, body) = search(vec![
            ("criteria", "(Last_Name:equals:chenk)".into()),
            ("email", "nobody@example.com".into()),
        ])
        .await;
        assert_eq!(ids(&body), vec![a.clone()]);
        let (_, body) = search(vec![(
            "criteria",
            "((Last_Name:starts_with:U)or(Phone:equals:440000))".into(),
        )])
        .await;
        assert_eq!(ids(&body), vec![b.clone(), c.clone()]);
        let (_, body) = search(vec![(
            "criteria",
            "((Company:equals:l)and(Last_Name:in:Franko,Ukrainka))".into(),
        )])
        .await;
        assert_eq!(ids(&body), vec![b.clone()]);
        let (status, body) = search(vec![("criteria", "(Last_Name:equals:x".into())]).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_QUERY"))
        );
        let (status, body) = search(vec![]).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], json!("REQUIRED_PARAM_MISSING"));
        assert_eq!(body["details"], json!({"param_name": "criteria"}));

        // Paging.
        let (_, body) = search(vec![
            ("phone", "67".into()),
            ("per_page", "1".into()),
            ("page", "1".into()),
        ])
        .await;
        assert_eq!(ids(&body), vec![a.clone()]);
        assert_eq!(body["info"]["more_records"], json!(true));
        let (_, body) = search(vec![
            ("phone", "67".into()),
            ("per_page", "1".into()),
            ("page", "2".into()),
        ])
        .await;
        assert_eq!(ids(&body), vec![b.clone()]);
        assert_eq!(body["info"]["more_records"], json!(false));
        let (status, _) = search(vec![("phone", "67".into()), ("per_page", "300".into())]).await;
        assert_eq!(status, 400);

        // Index lag: created through the API, found by COQL, not by search.
        z.set_index_lag(true);
        let (status, body) = api
            .post(
                "/crm/v7/Leads",
                json!({"data": [{"Last_Name": "New", "Phone": "+380501112233"}]}),
            )
            .await;
        assert_eq!(status, 201);
        let fresh = body["data"][0]["details"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, body) = search(vec![("phone", "501112233".into())]).await;
        assert_eq!((status, body), (204, Value::Null));
        let (status, body) = api
            .coql("select id, Phone from Leads where Phone like '%501112233' limit 10")
            .await;
        assert_eq!(status, 200);
        assert_eq!(ids(&body), vec![fresh.clone()]);
        let (status, _) = api.get(&format!("/crm/v7/Leads/{fresh}"), &[]).await;
        assert_eq!(status, 200);
        // A fixture is indexed at once, lag or not.
        let fixture = z
            .insert_record(
                "Leads",
                json!({"Last_Name": "Seeded", "Phone": "501112233"}),
            )
            .unwrap();
        let (_, body) = search(vec![("phone", "501112233".into())]).await;
        assert_eq!(ids(&body), vec![fixture.clone()]);
        z.reindex();
        let (_, body) = search(vec![("phone", "501112233".into())]).await;
        assert_eq!(ids(&body), vec![fresh, fixture]);
    }

    #[tokio::test]
    async fn coql_reads_what_was_written() {
        let api = setup().await;
        let z = &api.zoho;
        let anna = z.add_user("anna@example.com", "Anna Koval", "active");
        let a = z
            .insert_record("Leads", json!({"Last_Name": "Shevchenko", "Phone": "+38 (067) 123-45-67", "Owner": {"id": anna}}))
            .unwrap();
        let b = z
            .insert_record(
                "Leads",
                json!({"Last_Name": "Ukrainka", "Mobile": "0671234567", "Email": "l@example.com"}),
            )
            .unwrap();
        let c = z
            .insert_record("Leads", json!({"Last_Name": "Franko"}))
            .unwrap();

        let (status, body) = api
            .coql("select id, Owner, Phone, Mobile, Last_Name, Full_Name from Leads where Phone like '%671234567' or Mobile like '%671234567' limit 50")
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ids(&body), vec![a.clone(), b.clone()]);
        assert_eq!(body["info"], json!({"count": 2, "more_records": false}));
        let row = &body["data"][0];
        assert_eq!(
            row["Owner"],
            json!({"id": anna, "name": "Anna Koval", "email": "anna@example.com"})
        );
        assert_eq!(row["Phone"], json!("+38 (067) 123-45-67"));
        assert_eq!(row["Mobile"], Value::Null);
        assert_eq!(row["Full_Name"], json!("Shevchenko"));
        assert!(row.get("Email").is_none());

        let (_, body) = api
            .coql("SELECT Last_Name FROM Leads WHERE Last_Name = 'franko'")
            .await;
        assert_eq!(ids(&body), vec![c.clone()]);
        let (_, body) = api
            .coql("select Email from Leads where Email is not null")
            .await;
        assert_eq!(ids(&body), vec![b.clone()]);
        let (_, body) = api
            .coql("select Last_Name from Leads where (Last_Name = 'Franko' or Last_Name like 'ukr%') and Email is null")
            .await;
        assert_eq!(ids(&body), vec![c.clone()]);
        let (_, body) = api
            .coql(&format!(
                "select Last_Name from Leads where Owner = '{anna}'"
            ))
            .await;
        assert_eq!(ids(&body), vec![a.clone()]);
        let (_, body) = api.coql("select Last_Name from Leads where Last_Name in ('Franko', 'Shevchenko') order by Last_Name desc").await;
        assert_eq!(ids(&body), vec![a.clone(), c.clone()]);
        let (_, body) = api
            .coql("select Last_Name from Leads where Last_Name is not null limit 1, 1")
            .await;
        assert_eq!(ids(&body), vec![b.clone()]);
        assert_eq!(body["info"]["more_records"], json!(true));
        let (_, body) = api
            .coql("select Last_Name from Leads limit 2 offset 2")
            .await;
        assert_eq!(ids(&body), vec![c.clone()]);
        let (status, body) = api
            .coql("select Last_Name from Leads where Last_Name = 'Nobody'")
            .await;
        assert_eq!((status, body), (204, Value::Null));

        for bad in [
            "select from Leads",
            "select * from Leads",
            "select Last_Name Leads",
            "select Last_Name from Leads where Last_Name = 'x",
            "select Last_Name from Leads where Last_Name ~ 'x'",
            "select Last_Name from Leads limit x",
        ] {
            let (status, body) = api.coql(bad).await;
            assert_eq!(
                (status, body["code"].clone()),
                (400, json!("SYNTAX_ERROR")),
                "{bad}"
            );
        }
        let (status, body) = api.coql("select Nope from Leads").await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_QUERY"))
        );
        assert_eq!(body["details"]["column_name"], json!("Nope"));
        let (status, body) = api
            .coql("select Phone from Deals where Phone like '%1'")
            .await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_QUERY"))
        );
        let (status, body) = api.coql("select id from Accounts").await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("INVALID_QUERY"))
        );
        let (status, body) = api.post("/crm/v7/coql", json!({"query": "x"})).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("REQUIRED_PARAM_MISSING"))
        );
    }

    #[tokio::test]
    async fn credits_concurrency_and_faults() {
        let api = setup().await;
        let z = &api.zoho;
        let base = z.base_url();
        let auth = format!("Zoho-oauthtoken {}", api.token);
        let get = || {
            raw(
                &base,
                Some(&auth),
                reqwest::Method::GET,
                "/crm/v7/org",
                &[],
                None,
            )
        };

        z.set_credit_limit(Some(2));
        let (status, _, _, headers) = get().await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-ratelimit-limit"], "2");
        assert_eq!(headers["x-ratelimit-remaining"], "1");
        assert_eq!(get().await.0, 200);
        // 401s cost nothing.
        assert_eq!(
            raw(&base, None, reqwest::Method::GET, "/crm/v7/org", &[], None)
                .await
                .0,
            401
        );
        let (status, body, _, headers) = get().await;
        assert_eq!(status, 429);
        assert_eq!(
            body,
            json!({"code": "TOO_MANY_REQUESTS", "details": {}, "message": "You have reached the API limit", "status": "error"})
        );
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        let reset: i64 = headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset > Utc::now().timestamp_millis() + 23 * 3600 * 1000);
        assert_eq!(z.credits_used(), 2);
        assert_eq!(z.rate_limited_count(), 1);
        z.reset_credits();
        assert_eq!(get().await.0, 200);
        z.set_credit_limit(None);

        // Concurrency: a second request while one is held in flight.
        z.set_concurrency_limit(Some(1));
        z.fail_next(1, Fault::Slow(Duration::from_millis(400)));
        let held = tokio::spawn({
            let (base, auth) = (base.clone(), auth.clone());
            async move {
                raw(
                    &base,
                    Some(&auth),
                    reqwest::Method::GET,
                    "/crm/v7/org",
                    &[],
                    None,
                )
                .await
                .0
            }
        });
        z.wait_in_flight(1).await;
        let (status, body, _, _) = get().await;
        assert_eq!(
            (status, body["code"].clone()),
            (429, json!("TOO_MANY_REQUESTS"))
        );
        assert_eq!(held.await.unwrap(), 200);
        assert_eq!(get().await.0, 200);
        z.set_concurrency_limit(None);

        // Injected faults: Zoho-shaped, nothing charged.
        let used = z.credits_used();
        z.fail_next(1, Fault::TooManyRequests);
        let (status, body, _, headers) = get().await;
        assert_eq!(
            (status, body["code"].clone()),
            (429, json!("TOO_MANY_REQUESTS"))
        );
        assert_eq!(headers["x-ratelimit-limit"], "5000");
        assert!(headers.contains_key("x-ratelimit-reset"));
        z.fail_next_on(Some("POST"), "/coql", 1, Fault::ServerError);
        let (status, body, _, _) = raw(
            &base,
            Some(&auth),
            reqwest::Method::POST,
            "/crm/v7/coql",
            &[],
            Some(json!({"select_query": "select id from Leads"})),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                500,
                json!({"code": "INTERNAL_ERROR", "details": {}, "message": "Internal Server Error", "status": "error"})
            )
        );
        assert_eq!(z.credits_used(), used);
        assert_eq!(z.fault_count(), 3);
    }
}
