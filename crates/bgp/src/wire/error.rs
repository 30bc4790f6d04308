//! Errors of message decoding and encoding.
//!
//! Every decode error knows the NOTIFICATION it calls for (RFC 4271 §6), so the
//! session can answer a broken peer without a lookup table of its own. Errors that
//! RFC 7606 resolves without a reset (treat-as-withdraw, attribute-discard) are not
//! errors here: they are recorded in [`super::Update::errors`].

use super::notification::{self, ErrorCode, Notification};
use super::open::OpenDecodeError;
use super::prefix::{Family, Prefix};
use super::update::UpdateSessionReset;

/// A received message that calls for a NOTIFICATION and a session reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 16-octet marker is not all ones.
    #[error("message header marker is not all ones")]
    ConnectionNotSynchronized,
    /// The length field is out of range for the message (type).
    #[error("bad message length {length}")]
    BadMessageLength {
        /// The length field as received.
        length: u16,
    },
    /// Unknown message type.
    #[error("bad message type {msg_type}")]
    BadMessageType {
        /// The type as received.
        msg_type: u8,
    },
    /// Malformed OPEN.
    #[error("malformed OPEN: {0}")]
    Open(#[from] OpenDecodeError),
    /// UPDATE error for which RFC 7606 requires a session reset.
    #[error("malformed UPDATE (session reset): {0}")]
    Update(#[from] UpdateSessionReset),
    /// ROUTE-REFRESH whose body is not 4 octets (RFC 7313 §5).
    #[error("ROUTE-REFRESH body of {body_len} octets, expected 4")]
    RouteRefreshLength {
        /// Length of the message body.
        body_len: usize,
    },
}

impl DecodeError {
    /// The NOTIFICATION to send before closing the connection.
    pub fn notification(&self) -> Notification {
        match self {
            Self::ConnectionNotSynchronized => Notification::new(
                ErrorCode::MessageHeader,
                notification::header::CONNECTION_NOT_SYNCHRONIZED,
            ),
            Self::BadMessageLength { length } => Notification::with_data(
                ErrorCode::MessageHeader,
                notification::header::BAD_MESSAGE_LENGTH,
                length.to_be_bytes().to_vec(),
            ),
            Self::BadMessageType { msg_type } => Notification::with_data(
                ErrorCode::MessageHeader,
                notification::header::BAD_MESSAGE_TYPE,
                vec![*msg_type],
            ),
            Self::Open(e) => e.notification(),
            Self::Update(e) => e.notification(),
            Self::RouteRefreshLength { .. } => Notification::new(
                ErrorCode::RouteRefresh,
                notification::route_refresh::INVALID_MESSAGE_LENGTH,
            ),
        }
    }
}

/// A message that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would exceed 4096 octets.
    #[error("message of {length} octets exceeds the 4096-octet limit")]
    MessageTooLong {
        /// The length it would have.
        length: usize,
    },
    /// An attribute value longer than 65535 octets.
    #[error("path attribute {type_code} of {length} octets is too long")]
    AttributeTooLong {
        /// Attribute type code.
        type_code: u8,
        /// Value length.
        length: usize,
    },
    /// A prefix placed in an attribute or field of another address family.
    #[error("prefix {prefix} does not belong to family {family}")]
    FamilyMismatch {
        /// The prefix.
        prefix: Prefix,
        /// The family of the field.
        family: Family,
    },
    /// A next hop this speaker cannot encode for the family.
    #[error("next hop of the wrong address family for {family}")]
    NextHopFamily {
        /// The family of the MP_REACH_NLRI.
        family: Family,
    },
    /// Capabilities too long even for RFC 9072 extended optional parameters.
    #[error("OPEN optional parameters of {length} octets are too long")]
    OptionalParametersTooLong {
        /// Their length.
        length: usize,
    },
}
