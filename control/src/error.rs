//! Errors of the control client.

use weft_proto::msg::ErrorCode;

/// Why talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error(transparent)]
    Token(#[from] weft_proto::token::TokenParseError),
    #[error("coordinator identity does not match the token: {addr} presented key pin {presented}, the token expects {expected}; check that the token was made by this coordinator and that nothing intercepts the connection")]
    IdentityMismatch {
        addr: String,
        expected: String,
        presented: String,
    },
    #[error("cannot reach the coordinator at {addrs}: {reason}; check the address and that UDP to it is allowed")]
    Unreachable { addrs: String, reason: String },
    /// The coordinator refused; the message says what to do.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the coordinator removed this node; join again with a new token")]
    Removed,
    #[error("the connection to the coordinator was lost: {0}")]
    Connection(String),
    #[error("protocol error from the coordinator: {0}")]
    Protocol(String),
}

impl ControlError {
    /// The coordinator's refusal code, if this is a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ControlError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}
