//! Errors that name where they are: every problem in an automation, and
//! every failure to render one, carries the path of the offending part
//! (`steps[2].fields.agent`) so the admin UI and the run log can point at it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::RenderLimit;

/// What kind of problem a [`ValidationError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationErrorKind {
    /// An id, name, event kind or action id that is empty or malformed.
    InvalidName,
    /// The trigger's event kind is not in the catalog.
    UnknownEventKind,
    /// A step's action is not in the catalog.
    UnknownAction,
    /// A trigger option the event kind does not declare.
    UnknownOption,
    /// A required trigger option is not set.
    MissingOption,
    /// A step field the action does not declare.
    UnknownField,
    /// A required action field is not set.
    MissingField,
    /// A literal value of the wrong type for its field.
    WrongType,
    /// A template that does not parse.
    TemplateSyntax,
    /// A template, or one of its tags, over the size limits
    /// ([`crate::limits::MAX_TEMPLATE_BYTES`], [`crate::limits::MAX_TAG_TOKENS`]).
    TemplateTooLarge,
    /// A template that uses a filter the environment does not have.
    UnknownFilter,
    /// A template that uses a test (`is …`) the environment does not have.
    UnknownTest,
    /// A template that calls a function or method that does not exist.
    UnknownFunction,
    /// A template construct field templates do not support: include,
    /// import, extends, blocks, macros, set and filter blocks, recursive
    /// loops.
    UnsupportedTag,
    /// A template or filter refers to a name that is not a context root.
    UnknownVariable,
    /// A reference to an event field the event kind does not declare.
    UnknownEventField,
    /// A reference to a step that does not exist.
    UnknownStep,
    /// A reference to a step that has not run yet at that point.
    StepNotYetRun,
    /// A reference to an output field the step's action does not declare.
    UnknownOutputField,
    /// A filter field that is not a dotted path.
    InvalidPath,
    /// Two steps share an id.
    DuplicateStepId,
    /// The automation has no steps.
    NoSteps,
    /// Dedupe on an action that does not create records.
    DedupeNotSupported,
    /// A dedupe key that is not one of the step's fields.
    DedupeKeyNotSet,
    /// A searching dedupe mode without keys.
    DedupeWithoutKeys,
    /// An update action without a target.
    TargetRequired,
    /// A target on an action that does not update records.
    TargetNotSupported,
    /// A target with both or neither of `link` and `id`.
    TargetAmbiguous,
    /// A link on an action that neither creates nor updates records.
    LinkNotSupported,
    /// An operand that cannot be used with its operator.
    BadOperand,
    /// An `any` group without alternatives (it could never pass).
    EmptyGroup,
}

/// One problem in an automation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    /// Where: `steps[1].fields.name`, `filter.all[0].field`, `trigger.event`.
    pub path: String,
    pub kind: ValidationErrorKind,
    /// What is wrong, for a person.
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(
        path: impl Into<String>,
        kind: ValidationErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// All problems of an automation at once, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some error has this kind (handy in tests and UIs).
    pub fn has(&self, kind: ValidationErrorKind) -> bool {
        self.0.iter().any(|e| e.kind == kind)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A failure to render a step or evaluate a filter for one event: a missing
/// value, an unreadable phone number, a bad step index, a template over one
/// of the [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RenderError {
    /// The template's path, e.g. `steps[1].fields.name`.
    pub path: String,
    pub message: String,
    /// The bound the template hit, when that is why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<RenderLimit>,
}

impl RenderError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            limit: None,
        }
    }

    /// The template at `path` hit `limit`.
    pub(crate) fn limit(path: impl Into<String>, limit: RenderLimit) -> Self {
        Self {
            path: path.into(),
            message: limit.description(),
            limit: Some(limit),
        }
    }
}
