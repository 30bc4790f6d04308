//! BGP-4 message encoding and decoding (RFC 4271 §4), with the multiprotocol
//! (RFC 4760), 4-octet AS (RFC 6793), extended next hop (RFC 8950), route refresh
//! (RFC 2918), community (RFC 1997, RFC 8092) extensions and RFC 7606 error handling.
//!
//! Sans-IO: bytes in, typed messages out. [`split_frame`] cuts a complete message
//! off a receive buffer (or says more is needed); [`decode_message`] turns it into
//! a [`Message`]; [`Message::encode`] does the reverse. Nothing here panics on any
//! input: every read is bounds-checked and failures are typed errors that carry
//! the NOTIFICATION to send.

mod error;
mod notification;
mod open;
mod prefix;
mod reader;
mod update;

use bytes::{BufMut, BytesMut};
pub use error::{DecodeError, EncodeError};
pub use notification::{
    cease, fsm as fsm_subcode, header as header_subcode, open as open_subcode,
    route_refresh as route_refresh_subcode, update as update_subcode, ErrorCode, Notification,
};
pub use open::{
    capability_code, Capability, ExtendedNextHop, Open, OpenDecodeError, AS_TRANS, BGP_VERSION,
};
pub use prefix::{Afi, Family, Prefix, PrefixError, Safi};
use reader::Reader;
pub use update::{
    attr_type, flags as attr_flags, AsPath, AsSegment, AttributeError, AttributeErrorKind,
    Community, CommunityParseError, ErrorAction, LargeCommunity, MpNextHop, MpReach, MpUnreach,
    Origin, PathAttribute, RawAttribute, SegmentType, Update, UpdateSessionReset,
};

/// The header marker: 16 octets of ones.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Length of the message header.
pub const HEADER_LEN: usize = 19;
/// Largest message without RFC 8654 extended messages.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Message type codes.
pub mod msg_type {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 5;
}

/// Session properties that change the encoding of UPDATEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireOptions {
    /// Both sides advertised the 4-octet AS capability: AS_PATH carries 4-octet ASNs.
    /// Defaults to `true`, which is what every peer of this speaker negotiates; a
    /// session sets it from the OPEN exchange.
    pub four_octet_as: bool,
}

impl Default for WireOptions {
    fn default() -> Self {
        Self {
            four_octet_as: true,
        }
    }
}

/// A ROUTE-REFRESH message (RFC 2918, subtypes from RFC 7313).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// Family to refresh.
    pub family: Family,
    /// 0: normal request; 1: BoRR; 2: EoRR (RFC 7313).
    pub subtype: u8,
}

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The message type code.
    pub fn msg_type(&self) -> u8 {
        match self {
            Self::Open(_) => msg_type::OPEN,
            Self::Update(_) => msg_type::UPDATE,
            Self::Notification(_) => msg_type::NOTIFICATION,
            Self::Keepalive => msg_type::KEEPALIVE,
            Self::RouteRefresh(_) => msg_type::ROUTE_REFRESH,
        }
    }

    /// Appends the encoded message to `out`; on error `out` is left unchanged.
    pub fn encode(&self, opts: &WireOptions, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut body = BytesMut::new();
        match self {
            Self::Open(o) => o.encode_body(&mut body)?,
            Self::Update(u) => u.encode_body(opts, &mut body)?,
            Self::Notification(n) => n.encode_body(&mut body),
            Self::Keepalive => {}
            Self::RouteRefresh(rr) => {
                body.put_u16(rr.family.afi.0);
                body.put_u8(rr.subtype);
                body.put_u8(rr.family.safi.0);
            }
        }
        let length = HEADER_LEN + body.len();
        if length > MAX_MESSAGE_LEN {
            return Err(EncodeError::MessageTooLong { length });
        }
        out.reserve(length);
        out.put_slice(&MARKER);
        out.put_u16(u16::try_from(length).map_err(|_| EncodeError::MessageTooLong { length })?);
        out.put_u8(self.msg_type());
        out.put_slice(&body);
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, opts: &WireOptions) -> Result<BytesMut, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(opts, &mut out)?;
        Ok(out)
    }
}

/// Validates a message header (RFC 4271 §6.1) and returns `(type, length)`.
/// `Ok(None)` means fewer than [`HEADER_LEN`] octets are available.
pub fn check_header(buf: &[u8]) -> Result<Option<(u8, usize)>, DecodeError> {
    let mut r = Reader::new(buf);
    let (Some(marker), Some(length), Some(ty)) = (r.array::<16>(), r.u16(), r.u8()) else {
        return Ok(None);
    };
    if marker != MARKER {
        return Err(DecodeError::ConnectionNotSynchronized);
    }
    let len = usize::from(length);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError::BadMessageLength { length });
    }
    let min_len = match ty {
        msg_type::OPEN => 29,
        msg_type::UPDATE => 23,
        msg_type::NOTIFICATION => 21,
        msg_type::KEEPALIVE => HEADER_LEN,
        // Its length is checked with its own error code (RFC 7313 §5).
        msg_type::ROUTE_REFRESH => HEADER_LEN,
        other => return Err(DecodeError::BadMessageType { msg_type: other }),
    };
    if len < min_len || (ty == msg_type::KEEPALIVE && len != HEADER_LEN) {
        return Err(DecodeError::BadMessageLength { length });
    }
    Ok(Some((ty, len)))
}

/// Cuts one complete message (header included) off the front of `buf`.
///
/// `Ok(None)`: more bytes are needed, `buf` is untouched. A header error is
/// returned as soon as the header is complete; the connection must then be closed.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
    match check_header(buf)? {
        Some((_, len)) if buf.len() >= len => Ok(Some(buf.split_to(len))),
        _ => Ok(None),
    }
}

/// Decodes one complete message, as returned by [`split_frame`].
pub fn decode_message(frame: &[u8], opts: &WireOptions) -> Result<Message, DecodeError> {
    let Some((ty, len)) = check_header(frame)? else {
        return Err(DecodeError::BadMessageLength {
            length: u16::try_from(frame.len()).unwrap_or(u16::MAX),
        });
    };
    if len != frame.len() {
        return Err(DecodeError::BadMessageLength {
            length: u16::try_from(len).unwrap_or(u16::MAX),
        });
    }
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    match ty {
        msg_type::OPEN => Ok(Message::Open(Open::decode_body(body)?)),
        msg_type::UPDATE => Ok(Message::Update(Update::decode_body(body, opts)?)),
        msg_type::NOTIFICATION => Notification::decode_body(body)
            .map(Message::Notification)
            .ok_or(DecodeError::BadMessageLength {
                length: u16::try_from(len).unwrap_or(u16::MAX),
            }),
        msg_type::KEEPALIVE => Ok(Message::Keepalive),
        msg_type::ROUTE_REFRESH => {
            let mut r = Reader::new(body);
            match (r.u16(), r.u8(), r.u8(), r.is_empty()) {
                (Some(afi), Some(subtype), Some(safi), true) => {
                    Ok(Message::RouteRefresh(RouteRefresh {
                        family: Family {
                            afi: Afi(afi),
                            safi: Safi(safi),
                        },
                        subtype,
                    }))
                }
                _ => Err(DecodeError::RouteRefreshLength {
                    body_len: body.len(),
                }),
            }
        }
        other => Err(DecodeError::BadMessageType { msg_type: other }),
    }
}

/// [`split_frame`] then [`decode_message`]: the next message in `buf`, if complete.
pub fn decode_from(buf: &mut BytesMut, opts: &WireOptions) -> Result<Option<Message>, DecodeError> {
    match split_frame(buf)? {
        Some(frame) => decode_message(&frame, opts).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
