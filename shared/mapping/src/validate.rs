//! Checks an automation against the connectors' catalog before it is saved,
//! reporting every problem at once, each with its path:
//!
//! ```text
//! steps[2].fields.agent: unknown field for moysklad.customerorder.create
//! steps[1].fields.name: references steps.customer, which runs later
//! filter.all[0].field: event calltouch.call.completed has no field 'stats'
//! ```

use std::collections::BTreeMap;

use crate::catalog::{ActionKind, ActionSpec, Catalog, EventKindSpec};
use crate::error::{ValidationError, ValidationErrorKind as Kind, ValidationErrors};
use crate::filter::{FieldPath, Filter, Operator, Root, is_template};
use crate::model::{Automation, Dedupe, Step};
use crate::render::{CompiledAutomation, is_global};
use crate::values;

/// Validates an automation against a catalog. `Ok(())` means it can be
/// saved and compiled; otherwise every problem found is returned.
pub fn validate(automation: &Automation, catalog: &dyn Catalog) -> Result<(), ValidationErrors> {
    let (compiled, compile_errors) = CompiledAutomation::compile_collecting(automation);
    let mut validator = Validator {
        automation,
        catalog,
        event: catalog.event_kind(&automation.trigger.event),
        errors: Vec::new(),
    };
    validator.check_header();
    let in_section = |prefix: &str| {
        compile_errors
            .iter()
            .filter(|e| e.path == prefix || e.path.starts_with(&format!("{prefix}.")))
            .cloned()
            .collect::<Vec<_>>()
    };
    if let Some(filter) = &automation.filter {
        validator.check_filter(filter, "filter", None);
    }
    validator.errors.extend(in_section("filter"));
    validator.check_template_sites(&compiled, None);
    if automation.steps.is_empty() {
        validator.push(
            "steps",
            Kind::NoSteps,
            "an automation needs at least one step",
        );
    }
    let mut first_use: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, step) in automation.steps.iter().enumerate() {
        let base = format!("steps[{index}]");
        if let Some(first) = first_use.get(step.id.as_str()) {
            validator.push(
                format!("{base}.id"),
                Kind::DuplicateStepId,
                format!("step id '{}' is already used by steps[{first}]", step.id),
            );
        } else {
            first_use.insert(&step.id, index);
        }
        validator.check_step(step, index, &base);
        validator.errors.extend(in_section(&base));
        validator.check_template_sites(&compiled, Some(index));
    }
    let mut errors = validator.errors;
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert((e.path.clone(), e.message.clone())));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

struct Validator<'a> {
    automation: &'a Automation,
    catalog: &'a dyn Catalog,
    event: Option<&'a EventKindSpec>,
    errors: Vec<ValidationError>,
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `app.entity.what`: at least three non-empty segments of letters, digits,
/// `_` or `-`.
fn is_namespaced(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() >= 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

impl<'a> Validator<'a> {
    fn push(&mut self, path: impl Into<String>, kind: Kind, message: impl Into<String>) {
        self.errors.push(ValidationError::new(path, kind, message));
    }

    fn check_header(&mut self) {
        let automation = self.automation;
        if automation.id.trim().is_empty() {
            self.push("id", Kind::InvalidName, "the automation needs an id");
        }
        if automation.name.trim().is_empty() {
            self.push("name", Kind::InvalidName, "the automation needs a name");
        }
        let trigger = &automation.trigger;
        if trigger.connection.trim().is_empty() {
            self.push(
                "trigger.connection",
                Kind::InvalidName,
                "the trigger needs a connection",
            );
        }
        if !is_namespaced(&trigger.event) {
            self.push(
                "trigger.event",
                Kind::InvalidName,
                format!(
                    "'{}' is not an event kind of the form app.entity.what",
                    trigger.event
                ),
            );
        } else if self.event.is_none() {
            self.push(
                "trigger.event",
                Kind::UnknownEventKind,
                format!("unknown event kind {}", trigger.event),
            );
        }
        let Some(spec) = self.event else {
            return;
        };
        for (name, value) in &trigger.options {
            let path = format!("trigger.options.{name}");
            match spec.options.iter().find(|o| o.name == *name) {
                None => self.push(
                    path,
                    Kind::UnknownOption,
                    format!("unknown option for {}", spec.kind),
                ),
                Some(option) => {
                    if let Err(message) = option.field_type.check_literal(value) {
                        self.push(path, Kind::WrongType, message);
                    }
                }
            }
        }
        for option in spec.options.iter().filter(|o| o.required) {
            if !trigger.options.contains_key(&option.name) {
                self.push(
                    "trigger.options",
                    Kind::MissingOption,
                    format!(
                        "missing required option '{}' for {}",
                        option.name, spec.kind
                    ),
                );
            }
        }
    }

    fn check_step(&mut self, step: &Step, index: usize, base: &str) {
        if !is_identifier(&step.id) {
            self.push(
                format!("{base}.id"),
                Kind::InvalidName,
                format!("step id '{}' must match [a-z_][a-z0-9_]*", step.id),
            );
        }
        if step.connection.trim().is_empty() {
            self.push(
                format!("{base}.connection"),
                Kind::InvalidName,
                "the step needs a connection",
            );
        }
        let action = if !is_namespaced(&step.action) {
            self.push(
                format!("{base}.action"),
                Kind::InvalidName,
                format!(
                    "'{}' is not an action id of the form app.entity.verb",
                    step.action
                ),
            );
            None
        } else {
            let action = self.catalog.action(&step.action);
            if action.is_none() {
                self.push(
                    format!("{base}.action"),
                    Kind::UnknownAction,
                    format!("unknown action {}", step.action),
                );
            }
            action
        };
        if let Some(filter) = &step.filter {
            self.check_filter(filter, &format!("{base}.filter"), Some(index));
        }
        if let Some(action) = action {
            self.check_fields(step, action, base);
            self.check_record_options(step, action, base);
        }
        self.check_dedupe(step, base);
        if step
            .target
            .as_ref()
            .is_some_and(|target| target.link.is_some() == target.id.is_some())
        {
            self.push(
                format!("{base}.target"),
                Kind::TargetAmbiguous,
                "set exactly one of target.link and target.id",
            );
        }
        if let Some(link) = step.link.as_ref().filter(|link| !is_identifier(&link.name)) {
            self.push(
                format!("{base}.link.name"),
                Kind::InvalidName,
                format!("link name '{}' must match [a-z_][a-z0-9_]*", link.name),
            );
        }
    }

    fn check_fields(&mut self, step: &Step, action: &ActionSpec, base: &str) {
        for (name, value) in &step.fields {
            let path = format!("{base}.fields.{name}");
            match action.field(name) {
                None => self.push(
                    path,
                    Kind::UnknownField,
                    format!("unknown field for {}", action.id),
                ),
                Some(spec) => {
                    if contains_template(value) {
                        continue;
                    }
                    if let Err(message) = spec.field_type.check_literal(value) {
                        self.push(path, Kind::WrongType, message);
                    }
                }
            }
        }
        for spec in action.fields.iter().filter(|f| f.required) {
            if !step.fields.contains_key(&spec.name) {
                self.push(
                    format!("{base}.fields"),
                    Kind::MissingField,
                    format!("missing required field '{}' for {}", spec.name, action.id),
                );
            }
        }
    }

    fn check_record_options(&mut self, step: &Step, action: &ActionSpec, base: &str) {
        if step.dedupe != Dedupe::AlwaysCreate && action.kind != ActionKind::Create {
            self.push(
                format!("{base}.dedupe"),
                Kind::DedupeNotSupported,
                format!(
                    "{} does not create records; dedupe applies to create actions",
                    action.id
                ),
            );
        }
        if action.kind == ActionKind::Create && !step.dedupe.keys().is_empty() && !action.searchable
        {
            self.push(
                format!("{base}.dedupe.by"),
                Kind::DedupeNotSupported,
                format!(
                    "{} cannot search for existing records; drop dedupe.by (a link still de-duplicates)",
                    action.id
                ),
            );
        }
        match (&step.target, action.kind) {
            (None, ActionKind::Update) => self.push(
                format!("{base}.target"),
                Kind::TargetRequired,
                format!(
                    "{} updates a record: set target.link or target.id",
                    action.id
                ),
            ),
            (Some(_), ActionKind::Create | ActionKind::Other) => self.push(
                format!("{base}.target"),
                Kind::TargetNotSupported,
                format!("{} does not update an existing record", action.id),
            ),
            _ => {}
        }
        if step.link.is_some() && action.kind == ActionKind::Other {
            self.push(
                format!("{base}.link"),
                Kind::LinkNotSupported,
                format!("{} neither creates nor updates a record to link", action.id),
            );
        }
    }

    fn check_dedupe(&mut self, step: &Step, base: &str) {
        if step.dedupe == Dedupe::AlwaysCreate {
            return;
        }
        let keys = step.dedupe.keys();
        // A step with a link has a key already: the record linked to the
        // event's subject (a task already made for this deal).
        if keys.is_empty() && step.link.is_none() {
            self.push(
                format!("{base}.dedupe.by"),
                Kind::DedupeWithoutKeys,
                format!(
                    "{} needs at least one key to search by, or a link",
                    step.dedupe.mode()
                ),
            );
        }
        for (i, key) in keys.iter().enumerate() {
            if !step.fields.contains_key(key) {
                self.push(
                    format!("{base}.dedupe.by[{i}]"),
                    Kind::DedupeKeyNotSet,
                    format!("'{key}' is not set in fields, so there is no value to search by"),
                );
            }
        }
    }

    fn check_filter(&mut self, filter: &Filter, path: &str, at_step: Option<usize>) {
        match filter {
            Filter::All(children) | Filter::Any(children) => {
                let group = if matches!(filter, Filter::All(_)) {
                    "all"
                } else {
                    "any"
                };
                if group == "any" && children.is_empty() {
                    self.push(
                        format!("{path}.any"),
                        Kind::EmptyGroup,
                        "'any' without alternatives can never pass",
                    );
                }
                for (i, child) in children.iter().enumerate() {
                    self.check_filter(child, &format!("{path}.{group}[{i}]"), at_step);
                }
            }
            Filter::Condition(condition) => {
                if let Ok(field) = FieldPath::parse(&condition.field) {
                    let reference = match field.root {
                        Root::Event => std::iter::once("event".to_owned())
                            .chain(field.segments.iter().cloned())
                            .collect::<Vec<_>>()
                            .join("."),
                        _ => condition.field.trim().to_owned(),
                    };
                    self.check_reference(&format!("{path}.field"), &reference, at_step);
                }
                if let Operator::Gt(operand)
                | Operator::Gte(operand)
                | Operator::Lt(operand)
                | Operator::Lte(operand) = &condition.op
                {
                    let is_template_operand = operand.as_str().is_some_and(is_template);
                    if !is_template_operand && !values::is_orderable(operand) {
                        self.push(
                            format!("{path}.{}", condition.op.key()),
                            Kind::BadOperand,
                            format!(
                                "'{}' compares numbers or dates, and {operand} is neither",
                                condition.op.key()
                            ),
                        );
                    }
                }
            }
        }
    }

    fn check_template_sites(&mut self, compiled: &CompiledAutomation, step: Option<usize>) {
        for site in compiled.sites().iter().filter(|site| site.step == step) {
            for reference in compiled.references(site) {
                self.check_reference(&site.path, &reference, step);
            }
        }
    }

    /// Checks one dotted reference (`event.x`, `steps.customer.id`) read at
    /// `path`, from the automation filter (`at_step` = None) or a step.
    fn check_reference(&mut self, path: &str, reference: &str, at_step: Option<usize>) {
        let parts: Vec<&str> = reference.split('.').collect();
        let root = parts.first().copied().unwrap_or_default();
        match Root::from_name(root) {
            Some(Root::Event) => {
                let unknown = self
                    .event
                    .zip(parts.get(1))
                    .filter(|(spec, field)| spec.field(field).is_none());
                if let Some((spec, field)) = unknown {
                    self.push(
                        path,
                        Kind::UnknownEventField,
                        format!("event {} has no field '{field}'", spec.kind),
                    );
                }
            }
            Some(Root::Steps) => {
                let Some(id) = parts.get(1) else {
                    return;
                };
                let Some(referenced) = self.automation.step_index(id) else {
                    self.push(
                        path,
                        Kind::UnknownStep,
                        format!("references steps.{id}, which does not exist"),
                    );
                    return;
                };
                let problem = match at_step {
                    None => Some("but the automation filter runs before any step"),
                    Some(current) if current == referenced => Some("which is this step"),
                    Some(current) if referenced > current => Some("which runs later"),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    self.push(
                        path,
                        Kind::StepNotYetRun,
                        format!("references steps.{id}, {problem}"),
                    );
                    return;
                }
                let action_id = &self.automation.steps[referenced].action;
                let (Some(field), Some(action)) = (parts.get(2), self.catalog.action(action_id))
                else {
                    return;
                };
                if *field != "id"
                    && !action.output.is_empty()
                    && !action.output.iter().any(|o| o.name == *field)
                {
                    self.push(
                        path,
                        Kind::UnknownOutputField,
                        format!("steps.{id} ({action_id}) has no output field '{field}'"),
                    );
                }
            }
            Some(Root::Links | Root::Connection | Root::Now) => {}
            None if is_global(root) => {}
            None => self.push(
                path,
                Kind::UnknownVariable,
                format!(
                    "references '{root}', which is not defined (use event, steps, links, connection or now)"
                ),
            ),
        }
    }
}

fn contains_template(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => is_template(text),
        serde_json::Value::Array(items) => items.iter().any(contains_template),
        serde_json::Value::Object(map) => map.values().any(contains_template),
        _ => false,
    }
}
