//! The region's gRPC services, one per file, thin — authenticate, convert with [`ingot_proto::convert`],
//! call [`crate::app`], convert back. The client API (`ingot.v1`) is served on the API listener;
//! [`rack_session`] (`ingot.rack.v1`) on the cluster listener, for rack certificates only; [`blobs`]
//! (`BlobService`, image files) on the cluster listener too, for member regions and racks. Errors become
//! gRPC statuses here and only here.

pub mod agent;
pub mod blobs;
pub mod cluster;
pub mod events;
pub mod images;
pub mod machines;
pub mod pools;
pub mod rack_session;
pub mod racks;
pub mod subnets;
pub mod tags;
pub mod users;
pub mod zones;

use crate::app::{Actor, App};
use ingot_common::{DomainError, ErrorCode};
use ingot_proto::v1::ReadConsistency;
use tonic::{Code, Request, Status};

/// Maps a domain error to the gRPC status a client sees.
pub fn status(e: DomainError) -> Status {
    let code = match e.code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::OutOfRange => Code::OutOfRange,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
    };
    Status::new(code, clip(e.message))
}

/// Longest status message sent: messages may quote what the caller sent, and a status travels in an
/// HTTP/2 header — one that quoted a 1 MiB field would exceed the client's header limit and reach it as a
/// dropped connection instead of an answer.
pub const STATUS_MESSAGE_MAX: usize = 2048;

/// `message` cut to [`STATUS_MESSAGE_MAX`] bytes (at a character boundary, marked with "…").
pub fn clip(mut message: String) -> String {
    if message.len() > STATUS_MESSAGE_MAX {
        ingot_common::validate::truncate_text(&mut message, STATUS_MESSAGE_MAX - "…".len());
        message.push('…');
    }
    message
}

/// Authenticates the caller of `req` by its bearer token.
pub fn actor<T>(app: &App, req: &Request<T>) -> Result<Actor, Status> {
    let h = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    app.authenticate(h).map_err(status)
}

/// True unless the request asked for a stale read.
pub fn linearizable(consistency: i32) -> bool {
    consistency != ReadConsistency::Stale as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message quoting a 1 MiB field is cut, at a character boundary, so the status still fits a header.
    #[test]
    fn status_messages_are_clipped() {
        let e = DomainError::invalid("name", format!("'{}' is not a name", "é".repeat(1 << 19)));
        let s = status(e);
        assert!(
            s.message().len() <= STATUS_MESSAGE_MAX,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with('…'));
        assert_eq!(clip("short".into()), "short");
    }
}
