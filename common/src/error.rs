//! The error of a domain operation, carried through Raft from the apply step back to the caller.

use serde::{Deserialize, Serialize};

/// What kind of failure; maps one-to-one onto the gRPC status code a client sees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A field is malformed; `field` names it.
    InvalidArgument,
    /// The named object does not exist.
    NotFound,
    /// A unique field (MAC, hostname, name) is already taken.
    AlreadyExists,
    /// The object exists but is not in a state that allows the operation.
    FailedPrecondition,
    /// The caller is authenticated but may not do this.
    PermissionDenied,
    /// No valid credentials.
    Unauthenticated,
    /// The cluster cannot serve the request now (no leader, no quorum); retry.
    Unavailable,
    /// A bug or a storage failure; the message says which.
    Internal,
    /// A position (e.g. a watch revision) outside what is retained.
    OutOfRange,
    /// Not enough of a resource (no Ready machine fits an allocation).
    ResourceExhausted,
}

/// A failed operation: what failed, which field, and (in `message`) what to do about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// The request field at fault, when there is one (e.g. `macs[1]`).
    pub field: Option<String>,
    /// Human-readable explanation, including the field name and how to fix the request.
    pub message: String,
}

impl DomainError {
    /// A malformed field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Self {
            code: ErrorCode::InvalidArgument,
            field: Some(field),
            message,
        }
    }
    /// A missing object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::NotFound,
            field: None,
            message: message.into(),
        }
    }
    /// A uniqueness violation on `field`.
    pub fn exists(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::AlreadyExists,
            field: Some(field.into()),
            message: message.into(),
        }
    }
    /// An operation the object's current state does not allow.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::FailedPrecondition,
            field: None,
            message: message.into(),
        }
    }
    /// A forbidden operation.
    pub fn denied(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::PermissionDenied,
            field: None,
            message: message.into(),
        }
    }
    /// Missing or wrong credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Unauthenticated,
            field: None,
            message: message.into(),
        }
    }
    /// A transient failure: retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            field: None,
            message: message.into(),
        }
    }
    /// The same error, marked with the request field (or internal marker) it concerns.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    /// Not enough capacity.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::ResourceExhausted,
            field: None,
            message: message.into(),
        }
    }
    /// A position outside the retained range.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::OutOfRange,
            field: None,
            message: message.into(),
        }
    }
    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Internal,
            field: None,
            message: message.into(),
        }
    }
}
