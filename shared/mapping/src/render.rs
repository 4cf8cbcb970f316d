//! The step renderer: an automation compiled once (templates parsed and
//! cached in a sandboxed environment), then, per event, its filter
//! evaluated and each step rendered into a [`StepPlan`].
//!
//! Rendering is a pure function of the automation, the event, the outputs
//! of earlier steps, the links, the connection settings and `now`: the same
//! inputs give byte-identical output (fields are sorted, nothing reads the
//! clock).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::{Environment, ErrorKind};
use serde_json::{Map, Value};

use crate::bounded;
use crate::error::{RenderError, ValidationError, ValidationErrorKind, ValidationErrors};
use crate::event::Event;
use crate::filter::{FieldPath, Filter, Operator, Root, is_template};
use crate::limits::{MAX_FIELD_OUTPUT_BYTES, MAX_STEP_OUTPUT_BYTES, RenderLimit};
use crate::model::{Automation, Step};
use crate::plan::{
    DedupePlan, FilterOutcome, LookupKey, RenderedRequest, ResolvedTarget, StepPlan,
};
use crate::sandbox;
use crate::template;
use crate::values;

static NO_OUTPUTS: BTreeMap<String, Value> = BTreeMap::new();
static NO_LINKS: BTreeMap<String, String> = BTreeMap::new();

/// Everything a template or filter may read, for one event.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    /// The event; templates see its `data` as `event`.
    pub event: &'a Event,
    /// Outputs of the steps run so far, by step id (`steps.<id>`).
    pub steps: &'a BTreeMap<String, Value>,
    /// Records linked to the event's subject, link name → id (`links.<name>`).
    pub links: &'a BTreeMap<String, String>,
    /// Non-secret settings per connection id; a step sees its own
    /// connection's settings as `connection` (the filter: the trigger's).
    /// `default_region` there is the `phone` filter's default.
    pub connections: &'a BTreeMap<String, Value>,
    /// The time of the run, as `now` (RFC 3339, UTC).
    pub now: DateTime<Utc>,
}

impl<'a> RenderContext<'a> {
    /// A context with no step outputs, links or connection settings yet.
    pub fn new(event: &'a Event, now: DateTime<Utc>) -> Self {
        Self {
            event,
            steps: &NO_OUTPUTS,
            links: &NO_LINKS,
            connections: &NO_OUTPUTS,
            now,
        }
    }

    pub fn with_steps(self, steps: &'a BTreeMap<String, Value>) -> Self {
        Self { steps, ..self }
    }

    pub fn with_links(self, links: &'a BTreeMap<String, String>) -> Self {
        Self { links, ..self }
    }

    pub fn with_connections(self, connections: &'a BTreeMap<String, Value>) -> Self {
        Self {
            connections,
            ..self
        }
    }
}

/// A value of a step field (or operand), ready to render.
#[derive(Debug, Clone)]
enum CompiledValue {
    Literal(Value),
    /// A named template in the environment; `native` ones render JSON.
    Template {
        name: String,
        native: bool,
    },
    /// A template that is only a dotted path, optionally with
    /// `| default('literal')`: read straight from the context when the value
    /// is there (or clearly missing with a default), else rendered by the
    /// template `name` so errors and edge cases stay minijinja's.
    Path {
        name: String,
        path: FieldPath,
        default: Option<String>,
    },
    Array(Vec<CompiledValue>),
    Object(Vec<(String, CompiledValue)>),
}

#[derive(Debug, Clone)]
enum CompiledFilter {
    All(Vec<CompiledFilter>),
    Any(Vec<CompiledFilter>),
    Condition {
        field: String,
        path: FieldPath,
        op: Operator,
        operand: Option<CompiledValue>,
        /// Where the operand is, for errors.
        operand_path: String,
    },
}

#[derive(Debug, Clone)]
enum CompiledTarget {
    Link(String),
    Id(CompiledValue),
}

#[derive(Debug, Clone)]
struct CompiledStep {
    filter: Option<CompiledFilter>,
    fields: Vec<(String, CompiledValue)>,
    target: Option<CompiledTarget>,
}

/// Where a template sits, so validation can check what it references.
#[derive(Debug, Clone)]
pub(crate) struct TemplateSite {
    /// The template's path, also its name in the environment.
    pub(crate) path: String,
    /// `None` for the automation filter, else the step index.
    pub(crate) step: Option<usize>,
}

/// An automation with its templates compiled and cached. Build it once per
/// automation version and reuse it for every event.
pub struct CompiledAutomation {
    automation: Automation,
    env: Environment<'static>,
    filter: Option<CompiledFilter>,
    steps: Vec<CompiledStep>,
    sites: Vec<TemplateSite>,
    reads_links: bool,
}

impl std::fmt::Debug for CompiledAutomation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledAutomation")
            .field("id", &self.automation.id)
            .field("templates", &self.sites.len())
            .finish()
    }
}

struct Compiler {
    env: Environment<'static>,
    sites: Vec<TemplateSite>,
    errors: Vec<ValidationError>,
}

impl Compiler {
    fn value(&mut self, value: &Value, path: &str, step: Option<usize>) -> CompiledValue {
        match value {
            Value::String(text) if is_template(text) => {
                let (source, native) = template::source_for(text);
                let source = match sandbox::prepare(&source) {
                    Ok(source) => source,
                    Err(problems) => {
                        for problem in problems {
                            self.errors.push(ValidationError::new(
                                path,
                                problem.kind,
                                problem.message,
                            ));
                        }
                        return CompiledValue::Literal(Value::Null);
                    }
                };
                match self.env.add_template_owned(path.to_owned(), source) {
                    Ok(()) => {
                        self.sites.push(TemplateSite {
                            path: path.to_owned(),
                            step,
                        });
                        match template::single_expression(text).and_then(plain_path) {
                            Some((field_path, default)) => CompiledValue::Path {
                                name: path.to_owned(),
                                path: field_path,
                                default,
                            },
                            None => CompiledValue::Template {
                                name: path.to_owned(),
                                native,
                            },
                        }
                    }
                    Err(err) => {
                        // The rewritten source failed where the original
                        // parsed, e.g. calls nested past minijinja's limit.
                        self.errors.push(ValidationError::new(
                            path,
                            ValidationErrorKind::TemplateSyntax,
                            sandbox::syntax_message(&err),
                        ));
                        CompiledValue::Literal(Value::Null)
                    }
                }
            }
            Value::Array(items) if contains_template(value) => CompiledValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(item, &format!("{path}[{i}]"), step))
                    .collect(),
            ),
            Value::Object(map) if contains_template(value) => CompiledValue::Object(
                map.iter()
                    .map(|(key, item)| {
                        (
                            key.clone(),
                            self.value(item, &format!("{path}.{key}"), step),
                        )
                    })
                    .collect(),
            ),
            other => CompiledValue::Literal(other.clone()),
        }
    }

    fn filter(&mut self, filter: &Filter, path: &str, step: Option<usize>) -> CompiledFilter {
        match filter {
            Filter::All(children) => CompiledFilter::All(
                children
                    .iter()
                    .enumerate()
                    .map(|(i, child)| self.filter(child, &format!("{path}.all[{i}]"), step))
                    .collect(),
            ),
            Filter::Any(children) => CompiledFilter::Any(
                children
                    .iter()
                    .enumerate()
                    .map(|(i, child)| self.filter(child, &format!("{path}.any[{i}]"), step))
                    .collect(),
            ),
            Filter::Condition(condition) => {
                let field_path = FieldPath::parse(&condition.field).unwrap_or_else(|message| {
                    self.errors.push(ValidationError::new(
                        format!("{path}.field"),
                        ValidationErrorKind::InvalidPath,
                        message,
                    ));
                    FieldPath {
                        root: Root::Event,
                        segments: Vec::new(),
                    }
                });
                let operand_path = format!("{path}.{}", condition.op.key());
                let operand = condition
                    .op
                    .operand()
                    .map(|operand| self.value(operand, &operand_path, step));
                CompiledFilter::Condition {
                    field: condition.field.clone(),
                    path: field_path,
                    op: condition.op.clone(),
                    operand,
                    operand_path,
                }
            }
        }
    }
}

fn contains_template(value: &Value) -> bool {
    match value {
        Value::String(text) => is_template(text),
        Value::Array(items) => items.iter().any(contains_template),
        Value::Object(map) => map.values().any(contains_template),
        _ => false,
    }
}

/// `event.a.b` or `steps.x.id | default('…')`: a root, identifier segments
/// and at most a `default` with a plain string literal.
fn plain_path(expr: &str) -> Option<(FieldPath, Option<String>)> {
    let (path_text, default) = match expr.split_once('|') {
        None => (expr, None),
        Some((path_text, filter)) => {
            let args = filter.trim().strip_prefix("default")?.trim_start();
            let literal = args.strip_prefix('(')?.strip_suffix(')')?.trim();
            let quote = literal.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            let inner = literal.strip_prefix(quote)?.strip_suffix(quote)?;
            if inner.contains(['\'', '"', '\\']) {
                return None;
            }
            (path_text, Some(inner.to_owned()))
        }
    };
    let mut parts = path_text.trim().split('.');
    let root = Root::from_name(parts.next()?)?;
    let segments: Vec<String> = parts.map(str::to_owned).collect();
    let identifier = |s: &String| {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !segments.iter().all(identifier) || (root == Root::Now && !segments.is_empty()) {
        return None;
    }
    Some((FieldPath { root, segments }, default))
}

impl CompiledAutomation {
    /// Parses every template of the automation. Fails with every syntax
    /// error (and malformed filter path) at once; semantic checks against
    /// a catalog are [`crate::validate()`]'s job.
    pub fn compile(automation: &Automation) -> Result<Self, ValidationErrors> {
        let (compiled, errors) = Self::compile_collecting(automation);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(ValidationErrors(errors))
        }
    }

    pub(crate) fn compile_collecting(automation: &Automation) -> (Self, Vec<ValidationError>) {
        let mut compiler = Compiler {
            env: template::environment(),
            sites: Vec::new(),
            errors: Vec::new(),
        };
        let filter = automation
            .filter
            .as_ref()
            .map(|filter| compiler.filter(filter, "filter", None));
        let steps: Vec<CompiledStep> = automation
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| compile_step(&mut compiler, step, i))
            .collect();
        let reads_links = automation.steps.iter().any(|step| {
            step.link.is_some() || step.target.as_ref().is_some_and(|t| t.link.is_some())
        }) || filter.iter().any(filter_reads_links)
            || steps
                .iter()
                .filter_map(|step| step.filter.as_ref())
                .any(filter_reads_links)
            || compiler.sites.iter().any(|site| {
                compiler
                    .env
                    .get_template(&site.path)
                    .is_ok_and(|t| t.undeclared_variables(false).contains("links"))
            });
        let compiled = CompiledAutomation {
            automation: automation.clone(),
            env: compiler.env,
            filter,
            steps,
            sites: compiler.sites,
            reads_links,
        };
        (compiled, compiler.errors)
    }

    /// Whether running the automation needs the records linked to the
    /// event's subject: a template, filter or target reads `links`, or a
    /// step links what it makes (merged into what is linked already). When
    /// it does not, a run need not read them at all.
    pub fn reads_links(&self) -> bool {
        self.reads_links
    }

    /// The automation this was compiled from.
    pub fn automation(&self) -> &Automation {
        &self.automation
    }

    /// Number of steps.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    pub(crate) fn sites(&self) -> &[TemplateSite] {
        &self.sites
    }

    /// The variables (dotted, e.g. `event.caller_phone`) a template reads,
    /// sorted.
    pub(crate) fn references(&self, site: &TemplateSite) -> Vec<String> {
        let mut names: Vec<String> = self
            .env
            .get_template(&site.path)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Decides whether the automation runs for this event. A disabled
    /// automation, an event of another kind or connection, or failing
    /// conditions give `Filtered` with the reason; only a template that
    /// cannot be rendered is an error.
    pub fn evaluate_filter(&self, ctx: &RenderContext<'_>) -> Result<FilterOutcome, RenderError> {
        let automation = &self.automation;
        if !automation.enabled {
            return Ok(FilterOutcome::Filtered {
                reason: "automation is disabled".to_owned(),
            });
        }
        if ctx.event.kind != automation.trigger.event {
            return Ok(FilterOutcome::Filtered {
                reason: format!(
                    "event kind {} does not trigger this automation (it listens to {})",
                    ctx.event.kind, automation.trigger.event
                ),
            });
        }
        if ctx.event.connection != automation.trigger.connection {
            return Ok(FilterOutcome::Filtered {
                reason: format!(
                    "event comes from connection {}, the trigger listens to {}",
                    ctx.event.connection, automation.trigger.connection
                ),
            });
        }
        let Some(filter) = &self.filter else {
            return Ok(FilterOutcome::Passed);
        };
        template::begin_render();
        let mut scope = Scope::new(ctx, &automation.trigger.connection);
        Ok(match self.eval_filter(filter, &mut scope)? {
            None => FilterOutcome::Passed,
            Some(reason) => FilterOutcome::Filtered { reason },
        })
    }

    /// Renders step `index` for this event: the request to make, or why the
    /// step is skipped (its own filter failed, or the link it targets does
    /// not exist, or `update_only` has no key to search by).
    pub fn render_step(
        &self,
        index: usize,
        ctx: &RenderContext<'_>,
    ) -> Result<StepPlan, RenderError> {
        let (Some(step), Some(compiled)) =
            (self.automation.steps.get(index), self.steps.get(index))
        else {
            return Err(RenderError::new(
                format!("steps[{index}]"),
                format!("no such step (the automation has {})", self.steps.len()),
            ));
        };
        template::begin_render();
        let mut scope = Scope::new(ctx, &step.connection);
        let filtered = match &compiled.filter {
            Some(filter) => self.eval_filter(filter, &mut scope)?,
            None => None,
        };
        if let Some(reason) = filtered {
            return Ok(StepPlan::Skip {
                reason: format!("filtered: {reason}"),
            });
        }
        let target = match &compiled.target {
            None => None,
            Some(CompiledTarget::Link(name)) => match ctx.links.get(name) {
                Some(id) => Some(ResolvedTarget {
                    id: id.clone(),
                    from_link: Some(name.clone()),
                }),
                None => {
                    return Ok(StepPlan::Skip {
                        reason: format!(
                            "no linked record '{name}' for {} {}",
                            ctx.event.subject.kind, ctx.event.subject.id
                        ),
                    });
                }
            },
            Some(CompiledTarget::Id(value)) => {
                let path = format!("steps[{index}].target.id");
                let id = match self.render_value(value, &mut scope)? {
                    Value::String(s) if !s.trim().is_empty() => s.trim().to_owned(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(RenderError::new(
                            path,
                            format!("rendered {other}, which is not a record id"),
                        ));
                    }
                };
                Some(ResolvedTarget {
                    id,
                    from_link: None,
                })
            }
        };
        let mut fields = Map::new();
        for (name, value) in &compiled.fields {
            fields.insert(name.clone(), self.render_value(value, &mut scope)?);
        }
        let lookup: Vec<LookupKey> = step
            .dedupe
            .keys()
            .iter()
            .filter_map(|key| {
                let value = fields.get(key)?;
                (!values::is_blank(Some(value))).then(|| LookupKey {
                    field: key.clone(),
                    value: value.clone(),
                })
            })
            .collect();
        let linked_id = step
            .link
            .as_ref()
            .and_then(|link| ctx.links.get(&link.name).cloned());
        let dedupe = DedupePlan {
            mode: step.dedupe.mode(),
            lookup,
            linked_id,
        };
        if dedupe.mode == crate::model::DedupeMode::UpdateOnly
            && dedupe.linked_id.is_none()
            && dedupe.lookup.is_empty()
        {
            return Ok(StepPlan::Skip {
                reason: format!(
                    "update_only: none of the dedupe keys ({}) has a value",
                    step.dedupe.keys().join(", ")
                ),
            });
        }
        Ok(StepPlan::Call(RenderedRequest {
            step_id: step.id.clone(),
            action: step.action.clone(),
            connection: step.connection.clone(),
            fields,
            dedupe,
            link: step.link.as_ref().map(|link| link.name.clone()),
            target,
        }))
    }

    fn render_value(
        &self,
        value: &CompiledValue,
        scope: &mut Scope<'_>,
    ) -> Result<Value, RenderError> {
        match value {
            CompiledValue::Literal(value) => Ok(value.clone()),
            CompiledValue::Template { name, native } => self.render_template(name, *native, scope),
            CompiledValue::Path {
                name,
                path,
                default,
            } => match scope.read_plain_path(path, default.as_deref()) {
                Some(value) => {
                    // A copy of an input, yet still the field's output: the
                    // same caps as a rendered one.
                    let size = values::json_size_up_to(&value, MAX_FIELD_OUTPUT_BYTES);
                    if size > MAX_FIELD_OUTPUT_BYTES {
                        return Err(RenderError::limit(name, RenderLimit::FieldOutput));
                    }
                    scope.spend(name, size)?;
                    Ok(value)
                }
                None => self.render_template(name, true, scope),
            },
            CompiledValue::Array(items) => items
                .iter()
                .map(|item| self.render_value(item, scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            CompiledValue::Object(entries) => {
                let mut map = Map::new();
                for (key, item) in entries {
                    map.insert(key.clone(), self.render_value(item, scope)?);
                }
                Ok(Value::Object(map))
            }
        }
    }

    fn render_template(
        &self,
        name: &str,
        native: bool,
        scope: &mut Scope<'_>,
    ) -> Result<Value, RenderError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|err| RenderError::new(name, err.to_string()))?;
        template::clear_conversion_notes();
        let rendered = bounded::render_field(&template, scope.template_context());
        match rendered {
            Ok(text) => {
                scope.spend(name, text.len())?;
                if native {
                    template::decode_native(text)
                        .map_err(|err| RenderError::new(name, format!("value is not JSON: {err}")))
                } else {
                    Ok(Value::String(text))
                }
            }
            Err(err) => {
                if let Some(limit) = bounded::limit_of(&err) {
                    return Err(RenderError::limit(name, limit));
                }
                let notes = template::take_conversion_notes();
                let message = if err.kind() == ErrorKind::UndefinedError {
                    let references = {
                        let mut names: Vec<String> =
                            template.undeclared_variables(true).into_iter().collect();
                        names.sort();
                        names
                    };
                    match references.iter().find(|name| !scope.resolves(name)) {
                        Some(missing) if notes.is_empty() => format!(
                            "references {missing}, which is missing (add `| default(...)` to allow that)"
                        ),
                        _ if !notes.is_empty() => {
                            format!("{} (add `| default(...)` to allow that)", notes.join("; "))
                        }
                        _ => "uses an undefined value (add `| default(...)` to allow that)"
                            .to_owned(),
                    }
                } else {
                    let mut message = err.kind().to_string();
                    if let Some(detail) = err.detail() {
                        message.push_str(": ");
                        message.push_str(detail);
                    }
                    message
                };
                Err(RenderError::new(name, message))
            }
        }
    }

    /// `None` when the filter passes, else the reason it does not.
    fn eval_filter(
        &self,
        filter: &CompiledFilter,
        scope: &mut Scope<'_>,
    ) -> Result<Option<String>, RenderError> {
        match filter {
            CompiledFilter::All(children) => {
                for child in children {
                    if let Some(reason) = self.eval_filter(child, scope)? {
                        return Ok(Some(reason));
                    }
                }
                Ok(None)
            }
            CompiledFilter::Any(children) => {
                let mut reasons = Vec::new();
                for child in children {
                    match self.eval_filter(child, scope)? {
                        None => return Ok(None),
                        Some(reason) => reasons.push(reason),
                    }
                }
                Ok(Some(if reasons.is_empty() {
                    "'any' has no alternatives".to_owned()
                } else {
                    format!("none of: {}", reasons.join("; "))
                }))
            }
            CompiledFilter::Condition {
                field,
                path,
                op,
                operand,
                operand_path,
            } => {
                let operand = match operand {
                    Some(operand) => Some(self.render_value(operand, scope)?),
                    None => None,
                };
                let actual = scope.lookup(path);
                evaluate_condition(field, op, actual.as_deref(), operand.as_ref(), operand_path)
            }
        }
    }
}

/// Whether a condition of the tree tests a path rooted at `links` (its
/// operands are templates, checked with the others).
fn filter_reads_links(filter: &CompiledFilter) -> bool {
    match filter {
        CompiledFilter::All(children) | CompiledFilter::Any(children) => {
            children.iter().any(filter_reads_links)
        }
        CompiledFilter::Condition { path, .. } => path.root == Root::Links,
    }
}

fn compile_step(compiler: &mut Compiler, step: &Step, index: usize) -> CompiledStep {
    let base = format!("steps[{index}]");
    let filter = step
        .filter
        .as_ref()
        .map(|filter| compiler.filter(filter, &format!("{base}.filter"), Some(index)));
    let fields = step
        .fields
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                compiler.value(value, &format!("{base}.fields.{name}"), Some(index)),
            )
        })
        .collect();
    let target = step
        .target
        .as_ref()
        .and_then(|target| match (&target.link, &target.id) {
            (Some(link), _) => Some(CompiledTarget::Link(link.clone())),
            (None, Some(id)) => Some(CompiledTarget::Id(compiler.value(
                &Value::String(id.clone()),
                &format!("{base}.target.id"),
                Some(index),
            ))),
            (None, None) => None,
        });
    CompiledStep {
        filter,
        fields,
        target,
    }
}

/// Longest text of a value quoted in a reason.
const REASON_VALUE_CHARS: usize = 80;

fn shown(value: &Value) -> String {
    let text = values::display(value);
    if text.chars().count() > REASON_VALUE_CHARS {
        let cut: String = text.chars().take(REASON_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn shown_list(items: &[Value]) -> String {
    format!(
        "[{}]",
        items.iter().map(shown).collect::<Vec<_>>().join(", ")
    )
}

fn evaluate_condition(
    field: &str,
    op: &Operator,
    actual: Option<&Value>,
    operand: Option<&Value>,
    operand_path: &str,
) -> Result<Option<String>, RenderError> {
    let null = Value::Null;
    let operand = operand.unwrap_or(&null);
    let present = actual.filter(|v| !v.is_null());
    let is = |value: &Value| format!("{field} = {}", shown(value));
    let missing = || format!("{field} is missing");
    let list = || -> Result<&Vec<Value>, RenderError> {
        operand.as_array().ok_or_else(|| {
            RenderError::new(
                operand_path,
                format!("'{}' needs a list, got {}", op.key(), shown(operand)),
            )
        })
    };
    let fails = |reason: String| Ok(Some(reason));
    match op {
        Operator::Eq(_) => match present {
            Some(value) if values::loose_eq(value, operand) => Ok(None),
            Some(value) => fails(format!("{}, not {}", is(value), shown(operand))),
            None => fails(missing()),
        },
        Operator::Ne(_) => match present {
            Some(value) if values::loose_eq(value, operand) => fails(is(value)),
            _ => Ok(None),
        },
        Operator::In(_) => {
            let items = list()?;
            match present {
                Some(value) if items.iter().any(|item| values::loose_eq(value, item)) => Ok(None),
                Some(value) => fails(format!("{}, not one of {}", is(value), shown_list(items))),
                None => fails(missing()),
            }
        }
        Operator::NotIn(_) => {
            let items = list()?;
            match present {
                Some(value) if items.iter().any(|item| values::loose_eq(value, item)) => {
                    fails(format!("{}, one of {}", is(value), shown_list(items)))
                }
                _ => Ok(None),
            }
        }
        Operator::Contains(_) => match present {
            Some(value) if values::contains(value, operand) => Ok(None),
            Some(value) => fails(format!(
                "{}, does not contain {}",
                is(value),
                shown(operand)
            )),
            None => fails(missing()),
        },
        Operator::StartsWith(_) => match present {
            Some(value)
                if matches!(value, Value::String(_) | Value::Number(_))
                    && values::display(value).starts_with(&values::display(operand)) =>
            {
                Ok(None)
            }
            Some(value) => fails(format!(
                "{}, does not start with {}",
                is(value),
                shown(operand)
            )),
            None => fails(missing()),
        },
        Operator::Exists => {
            if values::is_blank(actual) {
                fails(missing())
            } else {
                Ok(None)
            }
        }
        Operator::Missing => match actual {
            value if values::is_blank(value) => Ok(None),
            Some(value) => fails(format!("{}, expected it to be missing", is(value))),
            None => Ok(None),
        },
        Operator::Gt(_) | Operator::Gte(_) | Operator::Lt(_) | Operator::Lte(_) => {
            let Some(value) = present else {
                return fails(missing());
            };
            let Some(ordering) = values::compare(value, operand) else {
                return fails(format!(
                    "{}, which cannot be compared with {}",
                    is(value),
                    shown(operand)
                ));
            };
            let holds = match op {
                Operator::Gt(_) => ordering.is_gt(),
                Operator::Gte(_) => ordering.is_ge(),
                Operator::Lt(_) => ordering.is_lt(),
                _ => ordering.is_le(),
            };
            if holds {
                Ok(None)
            } else {
                fails(format!(
                    "{}, not {} {}",
                    is(value),
                    op.symbol(),
                    shown(operand)
                ))
            }
        }
    }
}

/// The values one filter evaluation or step rendering reads, with the
/// minijinja context built lazily (literal-only steps never need it).
struct Scope<'a> {
    ctx: &'a RenderContext<'a>,
    connection: Cow<'a, Value>,
    now: String,
    template_context: Option<minijinja::Value>,
    /// Output bytes the step (or filter) may still produce.
    output_left: usize,
}

impl<'a> Scope<'a> {
    fn new(ctx: &'a RenderContext<'a>, connection: &str) -> Self {
        let connection = match ctx.connections.get(connection) {
            Some(settings) => Cow::Borrowed(settings),
            None => Cow::Owned(Value::Object(Map::new())),
        };
        Self {
            ctx,
            connection,
            now: ctx.now.to_rfc3339_opts(SecondsFormat::Secs, true),
            template_context: None,
            output_left: MAX_STEP_OUTPUT_BYTES,
        }
    }

    /// Counts a field's output against the step's cap.
    fn spend(&mut self, path: &str, bytes: usize) -> Result<(), RenderError> {
        match self.output_left.checked_sub(bytes) {
            Some(left) => {
                self.output_left = left;
                Ok(())
            }
            None => Err(RenderError::limit(path, RenderLimit::StepOutput)),
        }
    }

    fn template_context(&mut self) -> &minijinja::Value {
        let ctx = self.ctx;
        let connection = &self.connection;
        let now = &self.now;
        self.template_context.get_or_insert_with(|| {
            minijinja::context! {
                event => minijinja::Value::from_serialize(&ctx.event.data),
                steps => minijinja::Value::from_serialize(ctx.steps),
                links => minijinja::Value::from_serialize(ctx.links),
                connection => minijinja::Value::from_serialize(connection.as_ref()),
                now => now.as_str(),
            }
        })
    }

    fn lookup(&self, path: &FieldPath) -> Option<Cow<'_, Value>> {
        let segments = path.segments.as_slice();
        match path.root {
            Root::Event => values::get_path(&self.ctx.event.data, segments).map(Cow::Borrowed),
            Root::Connection => values::get_path(&self.connection, segments).map(Cow::Borrowed),
            Root::Steps => match segments.split_first() {
                Some((id, rest)) => self
                    .ctx
                    .steps
                    .get(id)
                    .and_then(|output| values::get_path(output, rest))
                    .map(Cow::Borrowed),
                None => None,
            },
            Root::Links => match segments {
                [name] => self
                    .ctx
                    .links
                    .get(name)
                    .map(|id| Cow::Owned(Value::String(id.clone()))),
                _ => None,
            },
            Root::Now => segments
                .is_empty()
                .then(|| Cow::Owned(Value::String(self.now.clone()))),
        }
    }

    /// The value of a plain-path template, when it can be read without the
    /// template engine with the same result: the value exists, or its
    /// parent is a map without that key and a default is given.
    fn read_plain_path(&self, path: &FieldPath, default: Option<&str>) -> Option<Value> {
        if let Some(value) = self.lookup(path) {
            return Some(value.into_owned());
        }
        let default = default?;
        let (last, parent) = path.segments.split_last()?;
        let missing_from_parent = match (path.root, parent.is_empty()) {
            (Root::Steps, true) => !self.ctx.steps.contains_key(last),
            (Root::Links, true) => !self.ctx.links.contains_key(last),
            (Root::Steps | Root::Links, false) | (Root::Now, _) => false,
            (Root::Event | Root::Connection, _) => {
                let parent = FieldPath {
                    root: path.root,
                    segments: parent.to_vec(),
                };
                matches!(self.lookup(&parent).as_deref(), Some(Value::Object(map)) if !map.contains_key(last))
            }
        };
        missing_from_parent.then(|| Value::String(default.to_owned()))
    }

    /// Whether a dotted template reference (`event.caller_phone`) has a value.
    fn resolves(&self, reference: &str) -> bool {
        let root = reference.split('.').next().unwrap_or_default();
        if Root::from_name(root).is_none() {
            return is_global(root);
        }
        FieldPath::parse(reference)
            .ok()
            .and_then(|path| self.lookup(&path).map(|v| !v.is_null()))
            .unwrap_or(false)
    }
}

/// Names minijinja provides itself (and the functions operators compile to).
pub(crate) fn is_global(name: &str) -> bool {
    template::is_function(name) || matches!(name, "loop" | "self" | "super")
}
