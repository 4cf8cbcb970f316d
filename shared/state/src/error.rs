//! Engine errors, each with the HTTP status and stable code a caller sees.
//! The JSON body always names what was wrong (`field`), so a user can fix a
//! request without reading logs. Messages never contain secrets.

use crmbridge_bus::BusError;
use crmbridge_store::StoreError;
use serde::Serialize;

use crate::sealed::SealError;

/// One problem with one part of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("this key's role may not {0}")]
    Forbidden(String),
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the delivery carries {count} events; the limit is {limit} per delivery")]
    TooManyEvents { count: usize, limit: usize },
    /// Another request is doing the same thing right now (accepting the
    /// same event): retry shortly.
    #[error("{0}")]
    InProgress(String),
    /// A run's first save found it created by another delivery of the same
    /// event. Dispatch takes that run instead; it is never answered.
    #[error("run {0} was created by another delivery of its event")]
    RunCreatedElsewhere(String),
    #[error("{} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("stored secrets of connection '{connection}' cannot be opened: {source}")]
    Sealed {
        connection: String,
        #[source]
        source: SealError,
    },
    #[error("corrupt record {what}: {message}")]
    Corrupt { what: String, message: String },
    /// The request needs an explicit confirmation of what it will do.
    #[error("{message}")]
    NeedsConfirmation {
        message: String,
        affected: Vec<String>,
    },
    /// The request is well formed but conflicts with the object's state
    /// (replaying a run that succeeded, deleting the last owner key…).
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// A vendor call or run step failed; `transient` = worth retrying.
    #[error("{what}: {message}")]
    Action {
        what: String,
        transient: bool,
        message: String,
    },
}

impl EngineError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Conflict {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::BadRequest { .. } => 400,
            Self::PayloadTooLarge { .. } | Self::TooManyEvents { .. } => 413,
            Self::InProgress(_) | Self::RunCreatedElsewhere(_) => 503,
            Self::Invalid(_) => 422,
            // The sender should retry: nothing was acknowledged.
            Self::Store(_) | Self::Bus(_) => 503,
            Self::Sealed { .. } | Self::Corrupt { .. } => 500,
            Self::NeedsConfirmation { .. } | Self::Conflict { .. } => 409,
            Self::Action {
                transient: true, ..
            } => 503,
            Self::Action {
                transient: false, ..
            } => 502,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest { .. } => "bad_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::InProgress(_) | Self::RunCreatedElsewhere(_) => "in_progress",
            Self::Invalid(_) => "invalid",
            Self::Store(_) => "store_unavailable",
            Self::Bus(_) => "bus_unavailable",
            Self::Sealed { .. } | Self::Corrupt { .. } => "internal",
            Self::NeedsConfirmation { .. } => "confirmation_required",
            Self::Conflict { .. } => "conflict",
            Self::Action { .. } => "vendor_failed",
        }
    }

    /// The JSON error body: `{"error": {"code", "message", "field"?, "errors"?}}`.
    pub fn to_body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        match self {
            Self::BadRequest { field, message } | Self::Conflict { field, message } => {
                error["field"] = field.clone().into();
                error["message"] = message.clone().into();
            }
            Self::PayloadTooLarge { .. } | Self::TooManyEvents { .. } => {
                error["field"] = "body".into()
            }
            Self::Invalid(errors) => {
                if let Some(first) = errors.first() {
                    error["field"] = first.field.clone().into();
                }
                error["errors"] = serde_json::to_value(errors).unwrap_or_default();
            }
            Self::Unauthorized(_) | Self::Forbidden(_) => error["field"] = "authorization".into(),
            Self::NotFound { what, .. } => error["field"] = (*what).into(),
            Self::NeedsConfirmation { affected, .. } => {
                error["field"] = "confirm".into();
                error["affected"] = affected.clone().into();
            }
            _ => {}
        }
        serde_json::json!({ "error": error })
    }
}

pub type EngineResult<T> = Result<T, EngineError>;
