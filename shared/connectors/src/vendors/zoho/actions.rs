//! Zoho's actions: one table per module maps our field names to Zoho's API
//! names, and one write path reads Zoho's per-record answers.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate};
use crmbridge_mapping::{ActionKind, ActionSpec, FieldSpec, FieldType, LookupKey};
use serde_json::{Map, Value, json};

use super::{Zoho, ZohoUser, id_text};
use crate::client::{Idempotency, VendorError};
use crate::support::{field, lenient_datetime, number, only_known, text};
use crate::{Action, ActionError, ActionOutput, CallContext, Lookup, Resend, Vendor};

/// Our field → Zoho's API name, per module.
const LEAD: &[(&str, &str)] = &[
    ("last_name", "Last_Name"),
    ("first_name", "First_Name"),
    ("company", "Company"),
    ("phone", "Phone"),
    ("mobile", "Mobile"),
    ("email", "Email"),
    ("lead_source", "Lead_Source"),
    ("lead_status", "Lead_Status"),
    ("description", "Description"),
];
const CONTACT: &[(&str, &str)] = &[
    ("last_name", "Last_Name"),
    ("first_name", "First_Name"),
    ("phone", "Phone"),
    ("mobile", "Mobile"),
    ("email", "Email"),
    ("description", "Description"),
];
const DEAL: &[(&str, &str)] = &[
    ("deal_name", "Deal_Name"),
    ("stage", "Stage"),
    ("pipeline", "Pipeline"),
    ("closing_date", "Closing_Date"),
    ("lead_source", "Lead_Source"),
    ("description", "Description"),
];
const TASK: &[(&str, &str)] = &[
    ("subject", "Subject"),
    ("status", "Status"),
    ("priority", "Priority"),
    ("description", "Description"),
];
const CALL: &[(&str, &str)] = &[
    ("subject", "Subject"),
    ("call_type", "Call_Type"),
    ("call_result", "Call_Result"),
    ("description", "Description"),
];

/// A record type: its module and field table.
#[derive(Debug, Clone, Copy)]
struct Module {
    entity: &'static str,
    name: &'static str,
    table: &'static [(&'static str, &'static str)],
}

const MODULES: &[Module] = &[
    Module { entity: "lead", name: "Leads", table: LEAD },
    Module { entity: "contact", name: "Contacts", table: CONTACT },
    Module { entity: "deal", name: "Deals", table: DEAL },
    Module { entity: "task", name: "Tasks", table: TASK },
    Module { entity: "call", name: "Calls", table: CALL },
];

/// The module a `zoho.<entity>.<verb>` action writes.
pub(crate) fn module_of(action: &str) -> Option<&'static str> {
    let entity = action.strip_prefix("zoho.")?.split('.').next()?;
    MODULES.iter().find(|m| m.entity == entity).map(|m| m.name)
}

/// The field of a module a user named: its API name (any case) or its
/// label. Zoho derives API names from labels, so a field created as
/// `rs_utm_term` may come back as `Rs_Utm_Term`.
pub(crate) fn resolve_field(fields: &[Value], wanted: &str) -> Option<String> {
    fields
        .iter()
        .find(|f| {
            f["api_name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(wanted))
        })
        .or_else(|| {
            fields.iter().find(|f| {
                f["field_label"]
                    .as_str()
                    .is_some_and(|l| l.trim().eq_ignore_ascii_case(wanted))
            })
        })
        .and_then(|f| f["api_name"].as_str())
        .map(str::to_owned)
}

pub(crate) fn missing_field_message(module: &str, name: &str) -> String {
    format!(
        "Zoho {module} has no field '{name}': create it in Zoho (Setup → Customization → Modules and Fields → {module} → Fields, type Single Line) and save again"
    )
}

impl Module {
    fn fields(&self, create: bool) -> Vec<FieldSpec> {
        let mut specs: Vec<FieldSpec> = self
            .table
            .iter()
            .map(|(ours, theirs)| {
                let kind = match *ours {
                    "phone" | "mobile" => FieldType::Phone,
                    "email" => FieldType::Email,
                    "closing_date" => FieldType::Date,
                    _ => FieldType::String,
                };
                field(ours, kind, &format!("Zoho {theirs}"))
            })
            .collect();
        specs.push(field(
            "owner",
            FieldType::String,
            "the owner: a Zoho user's e-mail (or id); the connection's user when empty",
        ));
        specs.push(field(
            "custom",
            FieldType::Object,
            "more fields by Zoho API name or label (e.g. rs_utm_source); each must exist in the module",
        ));
        specs.push(field(
            "trigger_workflows",
            FieldType::Boolean,
            "run Zoho's workflow rules on this write (default true)",
        ));
        match self.entity {
            "deal" => {
                specs.push(field("amount", FieldType::Money, "Zoho Amount"));
                specs.push(field("contact_id", FieldType::String, "the deal's contact (Contact_Name)"));
            }
            "task" => {
                specs.push(field("due_date", FieldType::Date, "Zoho Due_Date (a date; a date-time keeps its date)"));
                specs.push(field("remind_at", FieldType::DateTime, "a reminder at this time (Remind_At)"));
                specs.push(field(
                    "due_after_hours",
                    FieldType::Number,
                    "a deadline this many hours after due_from (or now): Due_Date is its date, and a reminder is set at the exact time",
                ));
                specs.push(field("due_from", FieldType::DateTime, "what due_after_hours counts from (default now)"));
            }
            "call" => {
                specs.push(field("start", FieldType::DateTime, "Call_Start_Time"));
                specs.push(field("duration_secs", FieldType::Integer, "Call_Duration, in seconds"));
            }
            _ => {}
        }
        if matches!(self.entity, "task" | "call") {
            specs.push(field("related_id", FieldType::String, "the lead, contact or deal it belongs to"));
            specs.push(field(
                "related_module",
                FieldType::Enum(vec!["Leads".into(), "Contacts".into(), "Deals".into(), "Accounts".into()]),
                "the module of related_id (default Leads)",
            ));
            if create {
                specs.push(field(
                    "unique_subject",
                    FieldType::Boolean,
                    "the subject names this record alone (it carries the call id): a retried step looks it up before creating",
                ));
            }
        } else if create {
            specs.push(field(
                "upsert_on",
                FieldType::Array,
                "Zoho unique fields to upsert on (duplicate_check_fields): a retried step updates instead of duplicating",
            ));
        }
        specs
    }

    /// The value a step gives a Zoho field (by its API name): through our
    /// field name, or among the custom fields.
    fn value_of(&self, fields: &Map<String, Value>, api_name: &str) -> Option<String> {
        if let Some((ours, _)) = self.table.iter().find(|(_, theirs)| theirs.eq_ignore_ascii_case(api_name)) {
            return text(fields, ours);
        }
        match fields.get("custom") {
            Some(Value::Object(custom)) => custom
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(api_name))
                .and_then(|(_, v)| match v {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
            _ => None,
        }
    }

    fn known(&self, create: bool) -> Vec<String> {
        self.fields(create).into_iter().map(|f| f.name).collect()
    }
}

/// Builds Zoho's record from a step's fields: every value checked, the
/// owner resolved, custom fields matched to the module's.
async fn build_record(
    zoho: &Zoho,
    ctx: &CallContext<'_>,
    module: &Module,
    fields: &Map<String, Value>,
    create: bool,
) -> Result<Map<String, Value>, ActionError> {
    let known = module.known(create);
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    only_known(fields, &known)?;
    let mut record = Map::new();
    for (ours, theirs) in module.table {
        if let Some(value) = text(fields, ours) {
            record.insert((*theirs).to_owned(), Value::String(value));
        }
    }
    if let Some(amount) = fields.get("amount").filter(|v| !v.is_null() && *v != "") {
        let number = number(amount)
            .ok_or_else(|| ActionError::field("fields.amount", "must be a number"))?;
        record.insert("Amount".into(), json!(number));
    }
    if let Some(contact) = text(fields, "contact_id") {
        record.insert("Contact_Name".into(), json!({ "id": contact }));
    }
    if let Some(due) = text(fields, "due_date") {
        record.insert("Due_Date".into(), Value::String(date_of(&due, "due_date")?));
    }
    if let Some(hours) = fields.get("due_after_hours").filter(|v| !v.is_null() && *v != "") {
        let hours = number(hours)
            .filter(|h| (0.0..=24.0 * 366.0).contains(h))
            .ok_or_else(|| ActionError::field("fields.due_after_hours", "must be a number of hours"))?;
        let from = match text(fields, "due_from") {
            Some(from) => instant(&from, "due_from")?,
            None => chrono::Utc::now().fixed_offset(),
        };
        let due = from + chrono::Duration::seconds((hours * 3600.0) as i64);
        record.insert("Due_Date".into(), Value::String(due.date_naive().to_string()));
        record.insert(
            "Remind_At".into(),
            json!({ "ALARM": format!("FREQ=NONE;ACTION=POPUP;TRIGGER=DATE-TIME:{}", due.to_rfc3339()) }),
        );
    }
    if let Some(at) = text(fields, "remind_at") {
        let at = instant(&at, "remind_at")?;
        record.insert(
            "Remind_At".into(),
            json!({ "ALARM": format!("FREQ=NONE;ACTION=POPUP;TRIGGER=DATE-TIME:{}", at.to_rfc3339()) }),
        );
    }
    if let Some(start) = text(fields, "start") {
        record.insert(
            "Call_Start_Time".into(),
            Value::String(instant(&start, "start")?.to_rfc3339()),
        );
    }
    if let Some(secs) = fields.get("duration_secs").filter(|v| !v.is_null() && *v != "") {
        let secs = number(secs)
            .filter(|n| *n >= 0.0)
            .ok_or_else(|| ActionError::field("fields.duration_secs", "must be a number of seconds"))?
            as u64;
        // Zoho documents "HH:mm" and refuses a zero duration: whole
        // minutes, rounded up, at least one (the seconds are in the
        // description the recipe writes).
        let minutes = secs.div_ceil(60).max(1);
        record.insert(
            "Call_Duration".into(),
            Value::String(format!("{:02}:{:02}", minutes / 60, minutes % 60)),
        );
    }
    if let Some(related) = text(fields, "related_id") {
        let related_module = text(fields, "related_module").unwrap_or_else(|| "Leads".into());
        if related_module == "Contacts" {
            record.insert("Who_Id".into(), json!({ "id": related }));
        } else {
            record.insert("What_Id".into(), json!({ "id": related }));
            record.insert("$se_module".into(), Value::String(related_module));
        }
    }
    if let Some(owner) = text(fields, "owner") {
        let id = owner_id(zoho, ctx, &owner).await?;
        record.insert("Owner".into(), json!({ "id": id }));
    }
    match fields.get("custom") {
        None | Some(Value::Null) => {}
        Some(Value::Object(custom)) => {
            let custom: Vec<(&String, &Value)> = custom
                .iter()
                .filter(|(_, v)| !v.is_null() && *v != "")
                .collect();
            if !custom.is_empty() {
                let available = zoho.fields(ctx, module.name).await?;
                let mut missing = Vec::new();
                for (name, value) in custom {
                    match resolve_field(&available, name) {
                        Some(api_name) => {
                            record.insert(api_name, value.clone());
                        }
                        None => missing.push(name.clone()),
                    }
                }
                if !missing.is_empty() {
                    return Err(ActionError::Skipped {
                        reason: missing
                            .iter()
                            .map(|name| missing_field_message(module.name, name))
                            .collect::<Vec<_>>()
                            .join("; "),
                        health: format!(
                            "Zoho {} field missing: {}",
                            module.name,
                            missing.join(", ")
                        ),
                    });
                }
            }
        }
        Some(_) => return Err(ActionError::field("fields.custom", "must be an object")),
    }
    Ok(record)
}

/// A user id for an owner given by e-mail or id.
async fn owner_id(zoho: &Zoho, ctx: &CallContext<'_>, owner: &str) -> Result<String, ActionError> {
    let owner = owner.trim();
    if owner.chars().all(|c| c.is_ascii_digit()) {
        return Ok(owner.to_owned());
    }
    let users = zoho.users(ctx).await?;
    users
        .iter()
        .find(|u| u.email.eq_ignore_ascii_case(owner))
        .map(|u| u.id.clone())
        .ok_or_else(|| {
            ActionError::field(
                "fields.owner",
                format!("no active Zoho user has the e-mail {owner}"),
            )
        })
}

fn instant(text: &str, name: &str) -> Result<DateTime<chrono::FixedOffset>, ActionError> {
    DateTime::parse_from_rfc3339(text.trim())
        .or_else(|_| {
            lenient_datetime(text)
                .map(|n| n.and_utc().fixed_offset())
                .ok_or(())
        })
        .map_err(|()| ActionError::field(format!("fields.{name}"), format!("'{text}' is not a date-time")))
}

fn date_of(text: &str, name: &str) -> Result<String, ActionError> {
    if let Ok(date) = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return Ok(date.to_string());
    }
    Ok(instant(text, name)?.date_naive().to_string())
}

fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Reads Zoho's answer for the one record a write sent.
fn read_result(
    answer: Option<(Value, crate::client::VendorResponse)>,
    module: &Module,
    record: &Map<String, Value>,
) -> Result<ActionOutput, ActionError> {
    let Some((body, response)) = answer else {
        return Err(VendorError::Decode {
            status: 204,
            message: "Zoho answered a write with no content".into(),
        }
        .into());
    };
    let result = &body["data"][0];
    let code = result["code"].as_str().unwrap_or_default();
    let details = &result["details"];
    let our_field = |api_name: &str| -> String {
        module
            .table
            .iter()
            .find(|(_, theirs)| *theirs == api_name)
            .map(|(ours, _)| format!("fields.{ours}"))
            .unwrap_or_else(|| match api_name {
                "Owner" => "fields.owner".into(),
                "What_Id" | "Who_Id" | "$se_module" => "fields.related_id".into(),
                other => format!("fields.custom.{other}"),
            })
    };
    match code {
        "SUCCESS" => {
            let id = id_text(&details["id"]);
            let mut out = Value::Object(record.clone());
            out["id"] = Value::String(id.clone());
            out["module"] = Value::String(module.name.into());
            if let Some(action) = result["action"].as_str() {
                out["upsert"] = Value::String(action.into());
            }
            Ok(ActionOutput {
                id,
                record: out,
                response_status: response.status,
                attempts: response.attempts,
            })
        }
        // A unique field already holds this value: the record exists (a
        // repeated step, or someone else made it).
        "DUPLICATE_DATA" => {
            let id = [
                &details["duplicate_record"]["id"],
                &details["id"],
            ]
            .into_iter()
            .map(id_text)
            .find(|id| !id.is_empty())
            .ok_or_else(|| {
                ActionError::field(
                    our_field(details["api_name"].as_str().unwrap_or_default()),
                    "Zoho refused a duplicate value and did not say which record holds it",
                )
            })?;
            Ok(ActionOutput {
                id: id.clone(),
                record: json!({"id": id, "existing": true, "module": module.name,
                    "duplicate_field": details["api_name"]}),
                response_status: response.status,
                attempts: response.attempts,
            })
        }
        "MANDATORY_NOT_FOUND" | "INVALID_DATA" => {
            let api_name = details["api_name"].as_str().unwrap_or_default();
            let message = result["message"].as_str().unwrap_or("invalid data");
            Err(ActionError::field(
                if api_name.is_empty() { "fields".into() } else { our_field(api_name) },
                format!("Zoho: {message} ({code}{})", if api_name.is_empty() { String::new() } else { format!(", {api_name}") }),
            ))
        }
        _ => {
            let status = if response.status < 400 { 400 } else { response.status };
            let message = format!(
                "{code}: {}",
                result["message"].as_str().unwrap_or("the record was not written")
            );
            if matches!(code, "INTERNAL_ERROR" | "TOO_MANY_REQUESTS") {
                return Err(VendorError::Status {
                    vendor: "zoho",
                    status: if code == "TOO_MANY_REQUESTS" { 429 } else { 500 },
                    attempts: response.attempts,
                    body: message,
                }
                .into());
            }
            Err(VendorError::Rejected {
                vendor: "zoho",
                status,
                message,
            }
            .into())
        }
    }
}

fn trigger_off(fields: &Map<String, Value>) -> bool {
    fields.get("trigger_workflows") == Some(&Value::Bool(false))
}

/// `zoho.<entity>.create`.
struct Create {
    zoho: Arc<Zoho>,
    module: Module,
}

#[async_trait]
impl Action for Create {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            format!("zoho.{}.create", self.module.entity),
            ActionKind::Create,
            self.module.fields(true),
        )
        .with_output(vec![
            field("id", FieldType::String, "record id"),
            field("existing", FieldType::Boolean, "the record already existed"),
        ])
    }

    /// Keyed only when the key is really there: an upsert on a field the
    /// step leaves empty is a plain insert.
    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        let keyed = match fields.get("upsert_on") {
            Some(Value::Array(list)) => {
                !list.is_empty()
                    && list.iter().all(|name| {
                        name.as_str()
                            .is_some_and(|name| self.module.value_of(fields, name).is_some())
                    })
            }
            _ => {
                fields.get("unique_subject") == Some(&Value::Bool(true))
                    && text(fields, "subject").is_some()
            }
        };
        if keyed { Resend::Keyed } else { Resend::Unsafe }
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let module = &self.module;
        let record = build_record(&self.zoho, ctx, module, fields, true).await?;
        if fields.get("unique_subject") == Some(&Value::Bool(true)) {
            let subject = record
                .get("Subject")
                .and_then(Value::as_str)
                .ok_or_else(|| ActionError::field("fields.subject", "unique_subject needs a subject"))?;
            if let Some(id) = self.by_subject(ctx, subject).await? {
                return Ok(ActionOutput {
                    id: id.clone(),
                    record: json!({"id": id, "existing": true, "module": module.name}),
                    response_status: 200,
                    attempts: 1,
                });
            }
        }
        let mut body = json!({ "data": [Value::Object(record.clone())] });
        if trigger_off(fields) {
            body["trigger"] = json!([]);
        }
        let upsert_on: Vec<String> = match fields.get("upsert_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        ActionError::field("fields.upsert_on", "must list Zoho field API names")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ActionError::field("fields.upsert_on", "must be a list")),
        };
        let keyed = self.resend(fields) == Resend::Keyed && !upsert_on.is_empty();
        let (path, idempotency) = if !keyed {
            (module.name.to_owned(), Idempotency::NotIdempotent)
        } else {
            body["duplicate_check_fields"] = json!(upsert_on);
            (format!("{}/upsert", module.name), Idempotency::Idempotent)
        };
        let answer = self
            .zoho
            .call(ctx, reqwest::Method::POST, &path, &[], Some(&body), idempotency)
            .await?;
        read_result(answer, module, &record)
    }

    fn lookup(&self) -> Option<&dyn Lookup> {
        matches!(self.module.entity, "lead" | "contact").then_some(self as &dyn Lookup)
    }
}

impl Create {
    /// The record of this module with exactly this subject: COQL (which
    /// sees what was just written), else the search when COQL refuses to
    /// filter on the subject (it may be a multi-line field there).
    async fn by_subject(
        &self,
        ctx: &CallContext<'_>,
        subject: &str,
    ) -> Result<Option<String>, ActionError> {
        let module = self.module.name;
        let query = format!(
            "select id, Subject from {module} where Subject = '{}' limit 2",
            quote(subject)
        );
        let rows = match self.zoho.coql_checked(ctx, &query).await? {
            Some(rows) => rows,
            None => {
                let escaped = subject
                    .replace('\\', "\\\\")
                    .replace('(', "\\(")
                    .replace(')', "\\)")
                    .replace(',', "\\,");
                let found = self
                    .zoho
                    .get(
                        ctx,
                        &format!("{module}/search"),
                        &[("criteria", format!("(Subject:equals:{escaped})"))],
                    )
                    .await?;
                super::records_of(found)
            }
        };
        Ok(rows
            .into_iter()
            .find(|r| r["Subject"].as_str() == Some(subject))
            .map(|r| id_text(&r["id"])))
    }
}

#[async_trait]
impl Lookup for Create {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        for key in keys {
            let Some(wanted) = key.value.as_str().filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let found = match key.field.as_str() {
                "phone" | "mobile" => self.zoho.find_by_phone(ctx, self.module.name, wanted).await?,
                "email" => self.zoho.find_by_email(ctx, self.module.name, wanted).await?,
                other => {
                    return Err(ActionError::field(
                        format!("dedupe.by.{other}"),
                        "Zoho records are found by phone, mobile or email",
                    ));
                }
            };
            if let Some(record) = found.first() {
                return Ok(Some(id_text(&record["id"])));
            }
        }
        Ok(None)
    }
}

/// `zoho.<entity>.update`.
struct Update {
    zoho: Arc<Zoho>,
    module: Module,
}

#[async_trait]
impl Action for Update {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            format!("zoho.{}.update", self.module.entity),
            ActionKind::Update,
            self.module.fields(false),
        )
        .with_output(vec![field("id", FieldType::String, "record id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let module = &self.module;
        let id = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ActionError::field("target", "an update needs the record's id"))?;
        let record = build_record(&self.zoho, ctx, module, fields, false).await?;
        let mut body = json!({ "data": [Value::Object(record.clone())] });
        if trigger_off(fields) {
            body["trigger"] = json!([]);
        }
        let answer = self
            .zoho
            .call(
                ctx,
                reqwest::Method::PUT,
                &format!("{}/{id}", module.name),
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        read_result(answer, module, &record)
    }
}

/// `zoho.caller.find`: who this caller is in Zoho (a lead or contact) and
/// who owns the record.
struct FindCaller(Arc<Zoho>);

const FIND_FIELDS: &[&str] = &["phone", "email", "known_id", "known_module", "modules"];

#[async_trait]
impl Action for FindCaller {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "zoho.caller.find",
            ActionKind::Other,
            vec![
                field("phone", FieldType::Phone, "the caller's number"),
                field("email", FieldType::Email, "the caller's e-mail"),
                field("known_id", FieldType::String, "a record id known already (a link): checked first"),
                field("known_module", FieldType::String, "the module of known_id (default Leads)"),
                field("modules", FieldType::Array, "modules searched, in order (default Leads, Contacts)"),
            ],
        )
        .with_output(vec![
            field("found", FieldType::Boolean, "a record was found"),
            field("id", FieldType::String, "its id (empty when none)"),
            field("module", FieldType::String, "its module"),
            field("owner_id", FieldType::String, "its owner's user id"),
            field("owner_email", FieldType::Email, "its owner's e-mail, in lower case (empty when the owner is no longer an active user)"),
            field("owner_name", FieldType::String, "its owner's name"),
        ])
    }

    fn reads_only(&self) -> bool {
        true
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, FIND_FIELDS)?;
        let zoho = &self.0;
        let mut found: Option<(String, Value)> = None;
        if let Some(id) = text(fields, "known_id") {
            let module = text(fields, "known_module").unwrap_or_else(|| "Leads".into());
            if let Some(record) = zoho.record(ctx, &module, &id).await? {
                found = Some((module, record));
            }
        }
        let modules: Vec<String> = match fields.get("modules") {
            Some(Value::Array(list)) => list.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect(),
            _ => vec!["Leads".into(), "Contacts".into()],
        };
        for module in &modules {
            if found.is_some() {
                break;
            }
            if !MODULES.iter().any(|m| m.name == module) {
                return Err(ActionError::field("fields.modules", format!("unknown module {module}")));
            }
            let mut hits = match text(fields, "phone") {
                Some(phone) => zoho.find_by_phone(ctx, module, &phone).await?,
                None => Vec::new(),
            };
            if hits.is_empty()
                && let Some(email) = text(fields, "email")
            {
                hits = zoho.find_by_email(ctx, module, &email).await?;
            }
            if let Some(record) = hits.into_iter().next() {
                found = Some((module.clone(), record));
            }
        }
        let record = match found {
            None => json!({"found": false, "id": "", "module": "", "owner_id": "", "owner_email": "", "owner_name": ""}),
            Some((module, record)) => {
                let owner = &record["Owner"];
                let mut owner_email = owner["email"].as_str().unwrap_or_default().to_lowercase();
                let owner_id = id_text(&owner["id"]);
                let mut owner_name = owner["name"].as_str().unwrap_or_default().to_owned();
                if owner_email.is_empty() && !owner_id.is_empty() {
                    let users: Vec<ZohoUser> = zoho.users(ctx).await?;
                    if let Some(user) = users.iter().find(|u| u.id == owner_id) {
                        owner_email = user.email.to_lowercase();
                        owner_name = user.name.clone();
                    }
                }
                json!({
                    "found": true,
                    "id": id_text(&record["id"]),
                    "module": module,
                    "owner_id": owner_id,
                    "owner_email": owner_email,
                    "owner_name": owner_name,
                })
            }
        };
        Ok(ActionOutput {
            id: record["id"].as_str().unwrap_or_default().to_owned(),
            record,
            response_status: 200,
            attempts: 1,
        })
    }
}

/// Adds every Zoho action to the vendor.
pub(crate) fn register(mut vendor: Vendor, zoho: Arc<Zoho>) -> Vendor {
    for module in MODULES {
        vendor = vendor.action(Arc::new(Create {
            zoho: zoho.clone(),
            module: *module,
        }));
    }
    for entity in ["lead", "contact", "deal", "task"] {
        if let Some(module) = MODULES.iter().find(|m| m.entity == entity) {
            vendor = vendor.action(Arc::new(Update {
                zoho: zoho.clone(),
                module: *module,
            }));
        }
    }
    vendor.action(Arc::new(FindCaller(zoho)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fields_resolve_by_api_name_or_label_in_any_case() {
        let fields = vec![
            json!({"api_name": "Rs_Utm_Term", "field_label": "rs_utm_term"}),
            json!({"api_name": "Custom_7", "field_label": "rs_google_client_id"}),
        ];
        assert_eq!(resolve_field(&fields, "rs_utm_term").as_deref(), Some("Rs_Utm_Term"));
        assert_eq!(resolve_field(&fields, "rs_google_client_id").as_deref(), Some("Custom_7"));
        assert_eq!(resolve_field(&fields, "rs_utm_source"), None);
    }

    #[test]
    fn resend_is_keyed_only_with_a_key() {
        let vendor = super::super::vendor();
        let create = vendor.find_action("zoho.lead.create").unwrap();
        let fields = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(create.resend(&fields(json!({"last_name": "x"}))), Resend::Unsafe);
        assert_eq!(
            create.resend(&fields(json!({"upsert_on": ["rs_call_id"], "custom": {"rs_call_id": "ua-1"}}))),
            Resend::Keyed
        );
        assert_eq!(
            create.resend(&fields(json!({"upsert_on": ["Email"], "email": ""}))),
            Resend::Unsafe,
            "an upsert on an empty field is a plain insert"
        );
        assert_eq!(
            create.resend(&fields(json!({"upsert_on": ["Email"], "email": "a@b.c"}))),
            Resend::Keyed
        );
        let task = vendor.find_action("zoho.task.create").unwrap();
        assert_eq!(
            task.resend(&fields(json!({"unique_subject": true, "subject": "Call (ua-1)"}))),
            Resend::Keyed
        );
        assert_eq!(task.resend(&fields(json!({}))), Resend::Unsafe);
        assert!(create.lookup().is_some() && task.lookup().is_none());
        assert_eq!(module_of("zoho.call.create"), Some("Calls"));
        assert_eq!(module_of("zoho.caller.find"), None);
    }

    #[test]
    fn dates_and_durations_take_zohos_shapes() {
        assert_eq!(date_of("2026-11-25T23:30:00+02:00", "d").unwrap(), "2026-11-25");
        assert_eq!(date_of("2026-11-25", "d").unwrap(), "2026-11-25");
        assert!(date_of("tomorrow", "d").is_err());
        assert_eq!(quote("O'Neil"), "O\\'Neil");
    }
}
