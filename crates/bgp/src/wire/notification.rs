//! NOTIFICATION message (RFC 4271 §4.5) with named error codes and subcodes.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// NOTIFICATION error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: Message Header Error.
    MessageHeader,
    /// 2: OPEN Message Error.
    OpenMessage,
    /// 3: UPDATE Message Error.
    UpdateMessage,
    /// 4: Hold Timer Expired.
    HoldTimerExpired,
    /// 5: Finite State Machine Error.
    FiniteStateMachine,
    /// 6: Cease.
    Cease,
    /// 7: ROUTE-REFRESH Message Error (RFC 7313).
    RouteRefresh,
    /// Any code this speaker does not name.
    Unknown(u8),
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::MessageHeader => 1,
            Self::OpenMessage => 2,
            Self::UpdateMessage => 3,
            Self::HoldTimerExpired => 4,
            Self::FiniteStateMachine => 5,
            Self::Cease => 6,
            Self::RouteRefresh => 7,
            Self::Unknown(c) => c,
        }
    }

    /// Parses a wire code.
    pub fn from_u8(c: u8) -> Self {
        match c {
            1 => Self::MessageHeader,
            2 => Self::OpenMessage,
            3 => Self::UpdateMessage,
            4 => Self::HoldTimerExpired,
            5 => Self::FiniteStateMachine,
            6 => Self::Cease,
            7 => Self::RouteRefresh,
            c => Self::Unknown(c),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::MessageHeader => "Message Header Error",
            Self::OpenMessage => "OPEN Message Error",
            Self::UpdateMessage => "UPDATE Message Error",
            Self::HoldTimerExpired => "Hold Timer Expired",
            Self::FiniteStateMachine => "Finite State Machine Error",
            Self::Cease => "Cease",
            Self::RouteRefresh => "ROUTE-REFRESH Message Error",
            Self::Unknown(_) => "unknown error code",
        }
    }
}

/// Message Header Error subcodes (RFC 4271 §6.1).
pub mod header {
    /// Connection Not Synchronized (bad marker).
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// Bad Message Length.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// Bad Message Type.
    pub const BAD_MESSAGE_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492).
pub mod open {
    /// Unspecific (used for malformed optional parameters).
    pub const UNSPECIFIC: u8 = 0;
    /// Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// Bad BGP Identifier.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// Unsupported Capability (RFC 5492).
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes (RFC 4271 §6.3).
pub mod update {
    /// Malformed Attribute List.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    /// Missing Well-known Attribute.
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    /// Attribute Flags Error.
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    /// Attribute Length Error.
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    /// Invalid ORIGIN Attribute.
    pub const INVALID_ORIGIN: u8 = 6;
    /// Invalid NEXT_HOP Attribute.
    pub const INVALID_NEXT_HOP: u8 = 8;
    /// Optional Attribute Error.
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    /// Invalid Network Field.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// Malformed AS_PATH.
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// Finite State Machine Error subcodes (RFC 6608).
pub mod fsm {
    /// Unspecified Error.
    pub const UNSPECIFIED: u8 = 0;
    /// Receive Unexpected Message in OpenSent State.
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    /// Receive Unexpected Message in OpenConfirm State.
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    /// Receive Unexpected Message in Established State.
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

/// Cease subcodes (RFC 4486, RFC 8203).
pub mod cease {
    /// Maximum Number of Prefixes Reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Administrative Shutdown.
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Administrative Reset.
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    /// Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Other Configuration Change.
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    /// Connection Collision Resolution.
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    /// Out of Resources.
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// Hard Reset (RFC 8538).
    pub const HARD_RESET: u8 = 9;
}

/// ROUTE-REFRESH Message Error subcodes (RFC 7313).
pub mod route_refresh {
    /// Invalid Message Length.
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: ErrorCode,
    /// Error subcode; meaning depends on `code` (see the submodules of this module).
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

impl Notification {
    /// Builds a notification without data.
    pub fn new(code: ErrorCode, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// Builds a notification with diagnostic data.
    pub fn with_data(code: ErrorCode, subcode: u8, data: Vec<u8>) -> Self {
        Self {
            code,
            subcode,
            data,
        }
    }

    /// CEASE / Administrative Shutdown, optionally with an RFC 8203 shutdown
    /// communication (UTF-8, truncated to 255 octets at a character boundary).
    pub fn administrative_shutdown(message: Option<&str>) -> Self {
        let mut data = Vec::new();
        if let Some(msg) = message.filter(|m| !m.is_empty()) {
            let mut end = msg.len().min(255);
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            let text = msg.get(..end).unwrap_or_default();
            data.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            data.extend_from_slice(text.as_bytes());
        }
        Self::with_data(ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN, data)
    }

    /// The RFC 8203 shutdown communication of a CEASE 2 or 4, if present and valid UTF-8.
    pub fn shutdown_communication(&self) -> Option<&str> {
        if self.code != ErrorCode::Cease
            || !matches!(
                self.subcode,
                cease::ADMINISTRATIVE_SHUTDOWN | cease::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(len))?).ok()
    }

    /// Human-readable subcode name, if known.
    // A flat table mirroring IANA's error subcode registries: splitting it would hide nothing.
    #[allow(clippy::too_many_lines)]
    pub fn subcode_name(&self) -> Option<&'static str> {
        let s = self.subcode;
        Some(match self.code {
            ErrorCode::MessageHeader => match s {
                header::CONNECTION_NOT_SYNCHRONIZED => "Connection Not Synchronized",
                header::BAD_MESSAGE_LENGTH => "Bad Message Length",
                header::BAD_MESSAGE_TYPE => "Bad Message Type",
                _ => return None,
            },
            ErrorCode::OpenMessage => match s {
                open::UNSPECIFIC => "Unspecific",
                open::UNSUPPORTED_VERSION => "Unsupported Version Number",
                open::BAD_PEER_AS => "Bad Peer AS",
                open::BAD_BGP_IDENTIFIER => "Bad BGP Identifier",
                open::UNSUPPORTED_OPTIONAL_PARAMETER => "Unsupported Optional Parameter",
                open::UNACCEPTABLE_HOLD_TIME => "Unacceptable Hold Time",
                open::UNSUPPORTED_CAPABILITY => "Unsupported Capability",
                _ => return None,
            },
            ErrorCode::UpdateMessage => match s {
                update::MALFORMED_ATTRIBUTE_LIST => "Malformed Attribute List",
                update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE => "Unrecognized Well-known Attribute",
                update::MISSING_WELL_KNOWN_ATTRIBUTE => "Missing Well-known Attribute",
                update::ATTRIBUTE_FLAGS_ERROR => "Attribute Flags Error",
                update::ATTRIBUTE_LENGTH_ERROR => "Attribute Length Error",
                update::INVALID_ORIGIN => "Invalid ORIGIN Attribute",
                update::INVALID_NEXT_HOP => "Invalid NEXT_HOP Attribute",
                update::OPTIONAL_ATTRIBUTE_ERROR => "Optional Attribute Error",
                update::INVALID_NETWORK_FIELD => "Invalid Network Field",
                update::MALFORMED_AS_PATH => "Malformed AS_PATH",
                _ => return None,
            },
            ErrorCode::HoldTimerExpired => match s {
                0 => "Unspecific",
                _ => return None,
            },
            ErrorCode::FiniteStateMachine => match s {
                fsm::UNSPECIFIED => "Unspecified Error",
                fsm::UNEXPECTED_IN_OPEN_SENT => "Receive Unexpected Message in OpenSent State",
                fsm::UNEXPECTED_IN_OPEN_CONFIRM => {
                    "Receive Unexpected Message in OpenConfirm State"
                }
                fsm::UNEXPECTED_IN_ESTABLISHED => "Receive Unexpected Message in Established State",
                _ => return None,
            },
            ErrorCode::Cease => match s {
                cease::MAX_PREFIXES => "Maximum Number of Prefixes Reached",
                cease::ADMINISTRATIVE_SHUTDOWN => "Administrative Shutdown",
                cease::PEER_DECONFIGURED => "Peer De-configured",
                cease::ADMINISTRATIVE_RESET => "Administrative Reset",
                cease::CONNECTION_REJECTED => "Connection Rejected",
                cease::OTHER_CONFIGURATION_CHANGE => "Other Configuration Change",
                cease::CONNECTION_COLLISION_RESOLUTION => "Connection Collision Resolution",
                cease::OUT_OF_RESOURCES => "Out of Resources",
                cease::HARD_RESET => "Hard Reset",
                _ => return None,
            },
            ErrorCode::RouteRefresh => match s {
                route_refresh::INVALID_MESSAGE_LENGTH => "Invalid Message Length",
                _ => return None,
            },
            ErrorCode::Unknown(_) => return None,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.code.to_u8());
        out.put_u8(self.subcode);
        out.put_slice(&self.data);
    }

    /// Decodes the body (after the header); the caller guarantees at least 2 octets
    /// through the header length check, but a short body is still handled.
    pub(crate) fn decode_body(body: &[u8]) -> Option<Self> {
        let (&code, rest) = body.split_first()?;
        let (&subcode, data) = rest.split_first()?;
        Some(Self {
            code: ErrorCode::from_u8(code),
            subcode,
            data: data.to_vec(),
        })
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code.name(), self.code.to_u8())?;
        match self.subcode_name() {
            Some(name) => write!(f, " / {name} ({})", self.subcode)?,
            None => write!(f, " / subcode {}", self.subcode)?,
        }
        if let Some(msg) = self.shutdown_communication() {
            write!(f, ": {msg:?}")?;
        } else if !self.data.is_empty() {
            write!(f, ", {} octets of data", self.data.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_codes() {
        let n = Notification::new(ErrorCode::OpenMessage, open::UNACCEPTABLE_HOLD_TIME);
        assert_eq!(
            n.to_string(),
            "OPEN Message Error (2) / Unacceptable Hold Time (6)"
        );
        let n = Notification::new(ErrorCode::Unknown(42), 9);
        assert_eq!(n.to_string(), "unknown error code (42) / subcode 9");
    }

    #[test]
    fn shutdown_communication_round_trip_and_truncation() {
        let n = Notification::administrative_shutdown(Some("node drained"));
        assert_eq!(n.data.first(), Some(&12));
        assert_eq!(n.shutdown_communication(), Some("node drained"));
        let long = "é".repeat(200); // 400 octets
        let n = Notification::administrative_shutdown(Some(&long));
        assert!(n.data.len() <= 256);
        assert_eq!(n.shutdown_communication().map(str::len), Some(254));
        let n = Notification::administrative_shutdown(None);
        assert!(n.data.is_empty());
        assert_eq!(n.shutdown_communication(), None);
    }
}
