//! Our BGP decoder checked against an independent one: NetGauze's `netgauze-bgp-pkt`.
//!
//! [`compare`] gives one frame to both decoders under the same session context and
//! sorts the outcome into a [`Verdict`]: both accept and decode the same message, both
//! refuse, one refuses for a reason on the allowlist of documented [`Difference`]s, or a
//! disagreement. [`check_input`] does that for a fuzzer input (the whole input as one
//! frame, then each frame of it as a stream) and for our re-encoding of every message
//! we accept, since what we encode must decode in theirs.
//!
//! The fields compared, the session context and the allowlist are listed in the fuzz
//! target's documentation (`fuzz_targets/decode_message.rs`) and in `README.md` next to
//! this crate; [`Difference::ALL`] is the allowlist itself, each entry with its reason.
//!
//! This file is also compiled into `sharedip-bgp`'s integration test `tests/oracle.rs`,
//! so the comparison runs in a plain `cargo test` without libFuzzer.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use netgauze_bgp_pkt::capabilities::BgpCapability;
use netgauze_bgp_pkt::nlri::{Ipv4UnicastAddress, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{
    AsPath as NgAsPath, InvalidPathAttribute, MpReach as NgMpReach, MpUnreach as NgMpUnreach,
    PathAttribute as NgAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::wire::deserializer::capabilities::BgpCapabilityParsingError;
use netgauze_bgp_pkt::wire::deserializer::nlri::{
    Ipv4UnicastParsingError, Ipv6UnicastParsingError,
};
use netgauze_bgp_pkt::wire::deserializer::notification::BgpNotificationMessageParsingError;
use netgauze_bgp_pkt::wire::deserializer::open::BgpOpenMessageParsingError;
use netgauze_bgp_pkt::wire::deserializer::path_attribute::{
    AsPathParsingError, PathAttributeParsingError,
};
use netgauze_bgp_pkt::wire::deserializer::route_refresh::BgpRouteRefreshMessageParsingError;
use netgauze_bgp_pkt::wire::deserializer::update::BgpUpdateMessageParsingError;
use netgauze_bgp_pkt::wire::deserializer::{BgpMessageParsingError, BgpParsingContext};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::{ParseFrom, ParseFromWithOneInput};
use netgauze_parse_utils::WritablePdu;
use sharedip_bgp::wire::{
    self, attr_type, AttributeErrorKind, Capability, MpNextHop, Open, PathAttribute, Prefix,
    SegmentType, Update, WireOptions, HEADER_LEN, MAX_MESSAGE_LEN,
};

/// The session context both decoders get: the only property of a session that changes
/// how a message decodes here is whether 4-octet ASNs were negotiated. Both always
/// accept IPv4 and IPv6 unicast, IPv4 NLRI with an IPv6 next hop (RFC 8950), and run
/// with ADD-PATH off and no multiple-labels capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Both sides advertised the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
}

impl Context {
    fn ours(self) -> WireOptions {
        WireOptions {
            four_octet_as: self.four_octet_as,
        }
    }

    /// Strict about everything: their lenient modes only move parse errors into a side
    /// list, which would hide what they refused.
    fn theirs(self) -> BgpParsingContext {
        BgpParsingContext::new(
            self.four_octet_as,
            HashMap::new(),
            HashMap::new(),
            true,
            true,
            true,
            true,
        )
    }
}

/// An entry of the allowlist: a way the two decoders are known to differ on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Difference {
    /// We keep an UPDATE with an RFC 7606 treat-as-withdraw or attribute-discard error;
    /// they refuse the UPDATE on the same attribute.
    Rfc7606Lenient,
    /// We record an RFC 7606 error they do not look for, and otherwise both decode the
    /// same message.
    Rfc7606UncheckedByThem,
    /// We reset the session on a second MP_REACH_NLRI or MP_UNREACH_NLRI; they keep both.
    DuplicateMpAttribute,
    /// They refuse a Partial bit on a well-known or optional non-transitive attribute.
    PartialBit,
    /// An attribute we keep verbatim without interpreting it, which they parse and refuse.
    AttributeKeptVerbatim,
    /// They refuse a prefix whose address is multicast or broadcast.
    NonUnicastPrefix,
    /// They refuse AS_PATH confederation segments.
    ConfederationSegments,
    /// An MP_REACH_NLRI of a family we do not speak whose header does not frame: we
    /// reset the session, they keep it as opaque bytes.
    MpHeaderOfOtherFamily,
    /// They read an IPv6 unicast next hop of any length but 32 as 16 octets.
    TheirIpv6NextHopLength,
    /// They cut the 16-bit SAFI of an extended next hop entry to its low octet.
    TheirExtendedNextHopSafi,
    /// They read the Multiple Labels capability without its length octet.
    TheirMultipleLabels,
    /// A capability we keep verbatim, or a family they do not know, in an OPEN.
    CapabilityKeptVerbatim,
    /// They check the OPEN's version, hold time and BGP identifier in the decoder.
    OpenSessionChecks,
    /// RFC 9072 extended optional parameters in an OPEN, which they do not support.
    ExtendedOptionalParameters,
    /// A NOTIFICATION error code or subcode outside their registry.
    NotificationCode,
    /// A ROUTE-REFRESH for a family or subtype outside their registry.
    RouteRefreshFamily,
    /// A message longer than 4096 octets, which they accept as an RFC 8654 extended
    /// message without asking whether it was negotiated.
    ExtendedMessage,
}

impl Difference {
    /// The whole allowlist.
    pub const ALL: [Difference; 17] = [
        Self::Rfc7606Lenient,
        Self::Rfc7606UncheckedByThem,
        Self::DuplicateMpAttribute,
        Self::PartialBit,
        Self::AttributeKeptVerbatim,
        Self::NonUnicastPrefix,
        Self::ConfederationSegments,
        Self::MpHeaderOfOtherFamily,
        Self::TheirIpv6NextHopLength,
        Self::TheirExtendedNextHopSafi,
        Self::TheirMultipleLabels,
        Self::CapabilityKeptVerbatim,
        Self::OpenSessionChecks,
        Self::ExtendedOptionalParameters,
        Self::NotificationCode,
        Self::RouteRefreshFamily,
        Self::ExtendedMessage,
    ];

    /// Why the difference is accepted.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rfc7606Lenient => {
                "RFC 7606 has us treat the UPDATE as withdraw (or discard the attribute) instead \
                 of resetting the session; they are run strict, so they refuse the same attribute"
            }
            Self::Rfc7606UncheckedByThem => {
                "a duplicate attribute (RFC 7606 §3.g), a missing well-known mandatory attribute \
                 (§3.d), wrong flags on an attribute they do not model (§3.c, e.g. \
                 AS4_AGGREGATOR), an unrecognized well-known attribute, an empty COMMUNITIES, \
                 LARGE_COMMUNITY, CLUSTER_LIST or EXTENDED COMMUNITIES (§7.8, §7.10, §7.14, \
                 RFC 8092 §6) or an ORIGINATOR_ID longer than 4 octets (§7.9) is an error for \
                 us and not checked by them; everything else of the UPDATE must still compare \
                 equal"
            }
            Self::DuplicateMpAttribute => {
                "RFC 7606 §3.g: a second MP_REACH_NLRI or MP_UNREACH_NLRI resets the session; \
                 they do not look for duplicates"
            }
            Self::PartialBit => {
                "RFC 7606 §3.c checks only the Optional and Transitive bits; they also refuse a \
                 Partial bit that RFC 4271 says must be 0"
            }
            Self::AttributeKeptVerbatim => {
                "attributes this speaker does not use (MED, LOCAL_PREF, AGGREGATOR, AS4_PATH, \
                 extended communities, MP attributes of other families, …) are kept verbatim \
                 and our import policy rejects every route; they parse and validate them"
            }
            Self::NonUnicastPrefix => {
                "they refuse NLRI whose address is multicast or broadcast (RFC 4271 §6.3 says \
                 such a prefix SHOULD be ignored, not that the UPDATE is malformed); we decode \
                 the prefix and our import policy rejects it like every route. They look at \
                 the host bits too, so a prefix they accept can fail their check once we have \
                 cleared its host bits and encoded it again (253.0.0.0/3 becomes 224.0.0.0/3)"
            }
            Self::ConfederationSegments => {
                "we decode AS_CONFED_SEQUENCE and AS_CONFED_SET (RFC 5065); they model only \
                 AS_SET and AS_SEQUENCE. An eBGP peer has no business sending them (RFC 5065 \
                 §5), and our import policy rejects every route anyway"
            }
            Self::MpHeaderOfOtherFamily => {
                "whatever the family, an MP_REACH_NLRI whose next hop runs past the attribute \
                 cannot be read, and RFC 7606 §7.11 makes that a session reset; they keep the \
                 attribute of a family they do not model as opaque bytes without looking"
            }
            Self::TheirIpv6NextHopLength => {
                "a defect of theirs: for IPv6 unicast they read 16 octets of next hop whatever \
                 the length octet says, unless it says 32; RFC 4760 §3 allows 16 or 32, and \
                 RFC 7606 §7.11 makes any other length a session reset, which is what we do"
            }
            Self::TheirExtendedNextHopSafi => {
                "a defect of theirs: the NLRI SAFI of an extended next hop entry is 16 bits \
                 (RFC 8950 §4) and they keep only its low octet, so 0x0901 reads as unicast; \
                 we skip an entry whose SAFI names no family (it does not fit the octet every \
                 other SAFI field has)"
            }
            Self::TheirMultipleLabels => {
                "a defect of theirs: they read the Multiple Labels capability (code 8, RFC \
                 8277) from the octet after its code to the end of the optional parameter, \
                 ignoring its length, so whatever follows it is lost; we keep it verbatim by \
                 its length"
            }
            Self::CapabilityKeptVerbatim => {
                "RFC 5492: a capability that is not understood is ignored, so we keep those we \
                 do not use (graceful restart, add-path, FQDN, …) verbatim and accept any \
                 AFI/SAFI in multiprotocol and extended next hop entries; they parse more \
                 capabilities and know only the families in their registry"
            }
            Self::OpenSessionChecks => {
                "a version other than 4, a hold time of 1 or 2 s and a BGP identifier of 0 are \
                 refused by our FSM (fsm::validate_open), which sends the NOTIFICATION; our \
                 decoder only decodes. A multicast or broadcast identifier is valid since \
                 RFC 6286 §2.1 (any non-zero value); they still refuse it"
            }
            Self::ExtendedOptionalParameters => {
                "RFC 9072 extended optional parameters length, which we decode and they do not \
                 support"
            }
            Self::NotificationCode => {
                "a NOTIFICATION is never answered and always ends the session, so we keep any \
                 code and subcode to log it; they know only registered ones"
            }
            Self::RouteRefreshFamily => {
                "we decode ROUTE-REFRESH for any AFI/SAFI and subtype and ignore the ones we \
                 did not negotiate (RFC 2918 §4, RFC 7313 §5); they know only registered ones"
            }
            Self::ExtendedMessage => {
                "we never negotiate RFC 8654 extended messages, so 4096 octets is the limit \
                 (RFC 4271 §4.1); they accept longer UPDATEs without the capability"
            }
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How one frame fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Both decode it, to the same message.
    Agree,
    /// Both refuse it.
    BothRefuse,
    /// They differ in a way on the allowlist.
    Documented(Difference),
    /// They differ in a way that is not on the allowlist: a bug in one of them.
    Disagree(String),
}

impl Verdict {
    /// A short label for statistics.
    pub fn label(&self) -> String {
        match self {
            Self::Agree => "agree".into(),
            Self::BothRefuse => "both-refuse".into(),
            Self::Documented(d) => d.to_string(),
            Self::Disagree(_) => "DISAGREE".into(),
        }
    }
}

/// A disagreement found by [`check_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The frame both decoders were given.
    pub frame: Vec<u8>,
    /// The session context.
    pub context: Context,
    /// What differed.
    pub detail: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decoders disagree (4-octet AS {}) on {}: {}",
            self.context.four_octet_as,
            hex(&self.frame),
            self.detail
        )
    }
}

/// Hex of a byte string, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fuzzer input: the first octet picks the session context (bit 0: 4-octet AS), the
/// rest is the byte stream.
pub fn split_input(data: &[u8]) -> (Context, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (
            Context {
                four_octet_as: b & 1 == 1,
            },
            rest,
        ),
        None => (
            Context {
                four_octet_as: true,
            },
            data,
        ),
    }
}

/// Runs the oracle over one fuzzer input: the whole stream as one frame, then every
/// frame our framing cuts from it, then our re-encoding of each message we decoded.
/// Returns the verdict of every comparison made, or the first disagreement.
pub fn check_input(data: &[u8]) -> Result<Vec<Verdict>, Disagreement> {
    let (ctx, stream) = split_input(data);
    let mut verdicts = Vec::new();
    let mut judge = |frame: &[u8]| -> Result<Verdict, Disagreement> {
        match compare(frame, ctx) {
            Verdict::Disagree(detail) => Err(Disagreement {
                frame: frame.to_vec(),
                context: ctx,
                detail,
            }),
            v => {
                verdicts.push(v.clone());
                Ok(v)
            }
        }
    };

    let whole = judge(stream)?;
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(frame)) = wire::split_frame(&mut buf) {
        // Judging the same bytes again would only cost time.
        let verdict = if frame.len() == stream.len() {
            whole.clone()
        } else {
            judge(&frame)?
        };
        let Ok(msg) = wire::decode_message(&frame, &ctx.ours()) else {
            continue;
        };
        let encoded = msg.to_bytes(&ctx.ours()).map_err(|e| Disagreement {
            frame: frame.to_vec(),
            context: ctx,
            detail: format!("we decoded {msg:?} but cannot encode it again: {e}"),
        })?;
        let again = if encoded == frame {
            verdict.clone()
        } else {
            judge(&encoded)?
        };
        // What both accepted and agreed on, re-encoded by us, must still be accepted by
        // both and mean the same. Except: their unicast check reads the host bits of a
        // prefix, which we clear, so 253.0.0.0/3 passes it and 224.0.0.0/3 does not.
        if verdict == Verdict::Agree
            && again != Verdict::Agree
            && again != Verdict::Documented(Difference::NonUnicastPrefix)
        {
            return Err(Disagreement {
                frame: encoded.to_vec(),
                context: ctx,
                detail: format!(
                    "our re-encoding of {} is {again:?} where the original agreed",
                    hex(&frame)
                ),
            });
        }
    }
    Ok(verdicts)
}

/// Decodes `frame` with both decoders and judges the outcome.
pub fn compare(frame: &[u8], ctx: Context) -> Verdict {
    let ours = wire::decode_message(frame, &ctx.ours());
    let theirs = decode_theirs(frame, ctx);
    match (ours, theirs) {
        (Err(_), Err(_)) => Verdict::BothRefuse,
        (Ok(o), Ok(t)) => compare_messages(frame, &o, &t),
        (Ok(o), Err(e)) => explain_their_refusal(frame, ctx, &o, &e),
        (Err(e), Ok(t)) => explain_our_refusal(frame, &e, &t),
    }
}

/// Their decoder on exactly `frame`: bytes after the message are an error, as they are
/// for ours.
pub fn decode_theirs(frame: &[u8], ctx: Context) -> Result<BgpMessage, TheirError> {
    let mut cur = SliceReader::new(frame);
    let mut pctx = ctx.theirs();
    let msg = BgpMessage::parse(&mut cur, &mut pctx).map_err(TheirError::Parse)?;
    if !cur.is_empty() {
        return Err(TheirError::TrailingBytes(cur.remaining()));
    }
    Ok(msg)
}

/// Why their decoder refused a frame.
#[derive(Debug)]
pub enum TheirError {
    /// Their own error.
    Parse(BgpMessageParsingError),
    /// The message ended before the frame did.
    TrailingBytes(usize),
}

impl fmt::Display for TheirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "{e}"),
            Self::TrailingBytes(n) => write!(f, "{n} octets after the message"),
        }
    }
}

impl TheirError {
    /// Whether an error of type `E` satisfying `pred` is in the chain of causes.
    fn has<E: Error + 'static>(&self, pred: impl Fn(&E) -> bool) -> bool {
        let Self::Parse(e) = self else {
            return false;
        };
        chain_has(e, pred)
    }
}

fn chain_has<E: Error + 'static>(top: &(dyn Error + 'static), pred: impl Fn(&E) -> bool) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(top);
    while let Some(e) = cur {
        if e.downcast_ref::<E>().is_some_and(&pred) {
            return true;
        }
        cur = e.source();
    }
    false
}

// ---------------------------------------------------------------------------------------
// The common form both decoders' results are brought into.

/// A prefix with host bits cleared: trailing bits past the length are irrelevant
/// (RFC 4271 §4.3) and we clear them, they keep them.
type CPrefix = (IpAddr, u8);

#[derive(Debug, Clone, PartialEq, Eq)]
enum CMessage {
    Open(COpen),
    Update(Box<CUpdate>),
    Notification {
        code: u8,
        subcode: u8,
        data: Vec<u8>,
    },
    Keepalive,
    RouteRefresh {
        afi: u16,
        safi: u8,
        subtype: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct COpen {
    version: u8,
    my_as: u16,
    hold_time: u16,
    bgp_id: Ipv4Addr,
    capabilities: Vec<CCapability>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CCapability {
    Multiprotocol {
        afi: u16,
        safi: u8,
    },
    RouteRefresh,
    /// (NLRI AFI, NLRI SAFI, next hop AFI) entries.
    ExtendedNextHop(Vec<(u16, u16, u16)>),
    FourOctetAs(u32),
    /// One we keep verbatim: only the code is compared.
    Other(u8),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CUpdate {
    withdrawn: Vec<CPrefix>,
    nlri: Vec<CPrefix>,
    /// Type codes of all attributes, first occurrence of each, in order.
    attributes: Vec<u8>,
    origin: Option<u8>,
    /// (segment type, ASNs).
    as_path: Option<Vec<(u8, Vec<u32>)>>,
    next_hop: Option<Ipv4Addr>,
    mp_reach: Option<CMpReach>,
    mp_unreach: Option<CMpUnreach>,
    communities: Option<Vec<u32>>,
    large_communities: Option<Vec<(u32, u32, u32)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CMpReach {
    Unicast {
        afi: u16,
        safi: u8,
        next_hop: IpAddr,
        link_local: Option<Ipv6Addr>,
        nlri: Vec<CPrefix>,
    },
    /// A family we do not speak: we keep the attribute verbatim, so only the family is
    /// compared.
    OtherFamily { afi: u16, safi: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CMpUnreach {
    Unicast {
        afi: u16,
        safi: u8,
        withdrawn: Vec<CPrefix>,
    },
    OtherFamily {
        afi: u16,
        safi: u8,
    },
}

fn prefix(p: &Prefix) -> CPrefix {
    (p.addr(), p.prefix_len())
}

fn seg_type(t: SegmentType) -> u8 {
    match t {
        SegmentType::Set => 1,
        SegmentType::Sequence => 2,
        SegmentType::ConfedSequence => 3,
        SegmentType::ConfedSet => 4,
    }
}

fn mp_family(value: &[u8]) -> (u16, u8) {
    match value {
        [a0, a1, s, ..] => (u16::from_be_bytes([*a0, *a1]), *s),
        _ => (0, 0),
    }
}

fn canon_ours(m: &wire::Message) -> CMessage {
    match m {
        wire::Message::Open(o) => CMessage::Open(canon_our_open(o)),
        wire::Message::Update(u) => CMessage::Update(Box::new(canon_our_update(u))),
        wire::Message::Notification(n) => CMessage::Notification {
            code: n.code.to_u8(),
            subcode: n.subcode,
            data: n.data.clone(),
        },
        wire::Message::Keepalive => CMessage::Keepalive,
        wire::Message::RouteRefresh(rr) => CMessage::RouteRefresh {
            afi: rr.family.afi.0,
            safi: rr.family.safi.0,
            subtype: rr.subtype,
        },
    }
}

fn canon_our_open(o: &Open) -> COpen {
    COpen {
        version: o.version,
        my_as: o.my_as,
        hold_time: o.hold_time,
        bgp_id: o.bgp_identifier,
        capabilities: o
            .capabilities
            .iter()
            .map(|c| match c {
                Capability::Multiprotocol(f) => CCapability::Multiprotocol {
                    afi: f.afi.0,
                    safi: f.safi.0,
                },
                Capability::RouteRefresh => CCapability::RouteRefresh,
                Capability::ExtendedNextHop(es) => CCapability::ExtendedNextHop(
                    es.iter()
                        .map(|e| (e.family.afi.0, u16::from(e.family.safi.0), e.next_hop_afi.0))
                        .collect(),
                ),
                Capability::FourOctetAs(asn) => CCapability::FourOctetAs(*asn),
                Capability::Unknown { code, .. } => CCapability::Other(*code),
            })
            .collect(),
    }
}

fn canon_our_update(u: &Update) -> CUpdate {
    let mut c = CUpdate {
        withdrawn: u.withdrawn.iter().map(prefix).collect(),
        nlri: u.nlri.iter().map(prefix).collect(),
        ..CUpdate::default()
    };
    for a in &u.attributes {
        c.attributes.push(a.type_code());
        match a {
            PathAttribute::Origin(o) => {
                c.origin = Some(match o {
                    wire::Origin::Igp => 0,
                    wire::Origin::Egp => 1,
                    wire::Origin::Incomplete => 2,
                })
            }
            PathAttribute::AsPath(p) => {
                c.as_path = Some(
                    p.segments
                        .iter()
                        .map(|s| (seg_type(s.kind), s.asns.clone()))
                        .collect(),
                )
            }
            PathAttribute::NextHop(nh) => c.next_hop = Some(*nh),
            PathAttribute::MpReach(m) => {
                let (next_hop, link_local) = match m.next_hop {
                    MpNextHop::Ipv4(a) => (IpAddr::V4(a), None),
                    MpNextHop::Ipv6 { global, link_local } => (IpAddr::V6(global), link_local),
                };
                c.mp_reach = Some(CMpReach::Unicast {
                    afi: m.family.afi.0,
                    safi: m.family.safi.0,
                    next_hop,
                    link_local,
                    nlri: m.nlri.iter().map(prefix).collect(),
                });
            }
            PathAttribute::MpUnreach(m) => {
                c.mp_unreach = Some(CMpUnreach::Unicast {
                    afi: m.family.afi.0,
                    safi: m.family.safi.0,
                    withdrawn: m.withdrawn.iter().map(prefix).collect(),
                })
            }
            PathAttribute::Communities(cs) => {
                c.communities = Some(cs.iter().map(|x| x.0).collect())
            }
            PathAttribute::LargeCommunities(cs) => {
                c.large_communities = Some(
                    cs.iter()
                        .map(|x| (x.global_admin, x.local_data1, x.local_data2))
                        .collect(),
                )
            }
            PathAttribute::Raw(r) if r.type_code == attr_type::MP_REACH_NLRI => {
                let (afi, safi) = mp_family(&r.value);
                c.mp_reach = Some(CMpReach::OtherFamily { afi, safi });
            }
            PathAttribute::Raw(r) if r.type_code == attr_type::MP_UNREACH_NLRI => {
                let (afi, safi) = mp_family(&r.value);
                c.mp_unreach = Some(CMpUnreach::OtherFamily { afi, safi });
            }
            PathAttribute::Raw(_) => {}
        }
    }
    c
}

fn v4_prefix(a: &Ipv4UnicastAddress) -> CPrefix {
    let net = a.network().address().trunc();
    (IpAddr::V4(net.addr()), net.prefix_len())
}

fn v6_prefix(a: &Ipv6UnicastAddress) -> CPrefix {
    let net = a.network().address().trunc();
    (IpAddr::V6(net.addr()), net.prefix_len())
}

fn address_type_numbers(t: AddressType) -> (u16, u8) {
    (
        u16::from(t.address_family()),
        u8::from(t.subsequent_address_family()),
    )
}

fn canon_theirs(m: &BgpMessage) -> CMessage {
    match m {
        BgpMessage::Open(o) => CMessage::Open(COpen {
            version: o.version(),
            my_as: o.my_as(),
            hold_time: o.hold_time(),
            bgp_id: o.bgp_id(),
            capabilities: o.capabilities().into_iter().map(canon_their_cap).collect(),
        }),
        BgpMessage::Update(u) => CMessage::Update(Box::new(canon_their_update(u))),
        BgpMessage::Notification(n) => {
            // Their model names each subcode as a variant; their serializer turns it back
            // into code, subcode and data.
            let mut body = Vec::new();
            match n.write(&mut body) {
                Ok(()) => match body.as_slice() {
                    [code, subcode, data @ ..] => CMessage::Notification {
                        code: *code,
                        subcode: *subcode,
                        data: data.to_vec(),
                    },
                    _ => CMessage::Notification {
                        code: 0,
                        subcode: 0,
                        data: body,
                    },
                },
                Err(e) => CMessage::Notification {
                    code: 0,
                    subcode: 0,
                    data: format!("their serializer failed: {e}").into_bytes(),
                },
            }
        }
        BgpMessage::KeepAlive => CMessage::Keepalive,
        BgpMessage::RouteRefresh(rr) => {
            let (afi, safi) = address_type_numbers(rr.address_type());
            CMessage::RouteRefresh {
                afi,
                safi,
                subtype: u8::from(rr.operation_type()),
            }
        }
    }
}

fn canon_their_cap(c: &BgpCapability) -> CCapability {
    match c {
        BgpCapability::MultiProtocolExtensions(mp) => {
            let (afi, safi) = address_type_numbers(mp.address_type());
            CCapability::Multiprotocol { afi, safi }
        }
        BgpCapability::RouteRefresh => CCapability::RouteRefresh,
        BgpCapability::ExtendedNextHopEncoding(e) => CCapability::ExtendedNextHop(
            e.encodings()
                .iter()
                .map(|x| {
                    let (afi, safi) = address_type_numbers(x.address_type());
                    (afi, u16::from(safi), u16::from(x.next_hop_afi()))
                })
                .collect(),
        ),
        BgpCapability::FourOctetAs(a) => CCapability::FourOctetAs(a.asn4()),
        other => CCapability::Other(match other.code() {
            Ok(code) => u8::from(code),
            Err(code) => code,
        }),
    }
}

fn their_code(a: &NgAttribute) -> u8 {
    match a.path_attribute_type() {
        Ok(t) => u8::from(t),
        Err(code) => code,
    }
}

fn canon_their_update(u: &netgauze_bgp_pkt::update::BgpUpdateMessage) -> CUpdate {
    let mut c = CUpdate {
        withdrawn: u.withdraw_routes().iter().map(v4_prefix).collect(),
        nlri: u.nlri().iter().map(v4_prefix).collect(),
        ..CUpdate::default()
    };
    for a in u.path_attributes() {
        let code = their_code(a);
        // We keep the first of duplicates (RFC 7606 §3.g); they keep all.
        if c.attributes.contains(&code) {
            continue;
        }
        c.attributes.push(code);
        match a.value() {
            PathAttributeValue::Origin(o) => c.origin = Some(u8::from(*o)),
            PathAttributeValue::AsPath(NgAsPath::As2PathSegments(segs)) => {
                c.as_path = Some(
                    segs.iter()
                        .map(|s| {
                            (
                                u8::from(s.segment_type()),
                                s.as_numbers().iter().map(|&a| u32::from(a)).collect(),
                            )
                        })
                        .collect(),
                )
            }
            PathAttributeValue::AsPath(NgAsPath::As4PathSegments(segs)) => {
                c.as_path = Some(
                    segs.iter()
                        .map(|s| (u8::from(s.segment_type()), s.as_numbers().to_vec()))
                        .collect(),
                )
            }
            PathAttributeValue::NextHop(nh) => c.next_hop = Some(nh.next_hop()),
            PathAttributeValue::MpReach(m) => c.mp_reach = Some(canon_their_mp_reach(m)),
            PathAttributeValue::MpUnreach(m) => c.mp_unreach = Some(canon_their_mp_unreach(m)),
            PathAttributeValue::Communities(cs) => {
                c.communities = Some(cs.communities().iter().map(|x| x.value()).collect())
            }
            PathAttributeValue::LargeCommunities(cs) => {
                c.large_communities = Some(
                    cs.communities()
                        .iter()
                        .map(|x| (x.global_admin(), x.local_data1(), x.local_data2()))
                        .collect(),
                )
            }
            _ => {}
        }
    }
    c
}

fn canon_their_mp_reach(m: &NgMpReach) -> CMpReach {
    match m {
        NgMpReach::Ipv4Unicast {
            next_hop,
            next_hop_local,
            nlri,
        } => CMpReach::Unicast {
            afi: 1,
            safi: 1,
            next_hop: *next_hop,
            link_local: *next_hop_local,
            nlri: nlri.iter().map(v4_prefix).collect(),
        },
        NgMpReach::Ipv6Unicast {
            next_hop_global,
            next_hop_local,
            nlri,
        } => CMpReach::Unicast {
            afi: 2,
            safi: 1,
            next_hop: IpAddr::V6(*next_hop_global),
            link_local: *next_hop_local,
            nlri: nlri.iter().map(v6_prefix).collect(),
        },
        other => {
            let (afi, safi) = match other.address_type() {
                Ok(t) => address_type_numbers(t),
                Err((afi, safi)) => (u16::from(afi), u8::from(safi)),
            };
            CMpReach::OtherFamily { afi, safi }
        }
    }
}

fn canon_their_mp_unreach(m: &NgMpUnreach) -> CMpUnreach {
    match m {
        NgMpUnreach::Ipv4Unicast { nlri } => CMpUnreach::Unicast {
            afi: 1,
            safi: 1,
            withdrawn: nlri.iter().map(v4_prefix).collect(),
        },
        NgMpUnreach::Ipv6Unicast { nlri } => CMpUnreach::Unicast {
            afi: 2,
            safi: 1,
            withdrawn: nlri.iter().map(v6_prefix).collect(),
        },
        other => {
            let (afi, safi) = match other.address_type() {
                Ok(t) => address_type_numbers(t),
                Err((afi, safi)) => (u16::from(afi), u8::from(safi)),
            };
            CMpUnreach::OtherFamily { afi, safi }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Judging.

fn compare_messages(frame: &[u8], ours: &wire::Message, theirs: &BgpMessage) -> Verdict {
    let o = canon_ours(ours);
    let mut t = canon_theirs(theirs);
    let errors = match ours {
        wire::Message::Update(u) => u.errors.as_slice(),
        _ => &[],
    };
    if errors.is_empty() {
        if o == t {
            return Verdict::Agree;
        }
        if has_multiple_labels(theirs) {
            return Verdict::Documented(Difference::TheirMultipleLabels);
        }
        if let (CMessage::Open(oo), CMessage::Open(to)) = (&o, &t) {
            if their_enh_safi(frame, oo).is_some_and(|patched| patched == *to) {
                return Verdict::Documented(Difference::TheirExtendedNextHopSafi);
            }
        }
        return Verdict::Disagree(format!("ours {o:?}\ntheirs {t:?}"));
    }
    // We found RFC 7606 errors they accepted. Only those they do not check for are on
    // the allowlist, and the rest of the UPDATE must still be the same.
    let their_unknown: Vec<u8> = match theirs {
        BgpMessage::Update(u) => u
            .path_attributes()
            .iter()
            .filter(|a| matches!(a.value(), PathAttributeValue::UnknownAttribute(_)))
            .map(their_code)
            .collect(),
        _ => Vec::new(),
    };
    if !errors.iter().all(|e| unchecked_by_them(e, &their_unknown)) {
        return Verdict::Disagree(format!(
            "we found RFC 7606 errors {errors:?} in an UPDATE they accept as {t:?}"
        ));
    }
    if let CMessage::Update(tu) = &mut t {
        // The attributes we dropped for such an error, they keep.
        for e in errors {
            if matches!(
                e.kind,
                AttributeErrorKind::Duplicate | AttributeErrorKind::Missing
            ) {
                continue;
            }
            tu.attributes.retain(|code| *code != e.type_code);
            match e.type_code {
                attr_type::COMMUNITIES => tu.communities = None,
                attr_type::LARGE_COMMUNITY => tu.large_communities = None,
                _ => {}
            }
        }
    }
    if o == t {
        Verdict::Documented(Difference::Rfc7606UncheckedByThem)
    } else {
        Verdict::Disagree(format!(
            "with RFC 7606 errors {errors:?}\nours {o:?}\ntheirs {t:?}"
        ))
    }
}

fn has_multiple_labels(theirs: &BgpMessage) -> bool {
    matches!(theirs, BgpMessage::Open(o)
        if o.capabilities().iter().any(|c| matches!(c, BgpCapability::MultipleLabels(_))))
}

/// Our OPEN with every extended next hop capability read their way, SAFI cut to its low
/// octet, if the frame has an entry whose SAFI does not fit an octet.
fn their_enh_safi(frame: &[u8], ours: &COpen) -> Option<COpen> {
    let raw: Vec<Vec<(u16, u16, u16)>> = capability_tlvs(frame.get(HEADER_LEN..)?)?
        .into_iter()
        .filter(|tlv| tlv.first() == Some(&wire::capability_code::EXTENDED_NEXT_HOP))
        .map(|tlv| {
            tlv.get(2..)
                .unwrap_or_default()
                .chunks_exact(6)
                .map(|e| {
                    let f = |i: usize| u16::from_be_bytes([e[i], e[i + 1]]);
                    (f(0), f(2), f(4))
                })
                .collect()
        })
        .collect();
    if !raw.iter().flatten().any(|(_, safi, _)| *safi > 255) {
        return None;
    }
    let mut patched = ours.clone();
    let mut raw = raw.into_iter();
    for c in &mut patched.capabilities {
        if let CCapability::ExtendedNextHop(entries) = c {
            *entries = raw
                .next()?
                .into_iter()
                .map(|(afi, safi, nh)| (afi, safi & 0xff, nh))
                .collect();
        }
    }
    Some(patched)
}

/// RFC 7606 errors of ours their decoder does not look for.
fn unchecked_by_them(e: &wire::AttributeError, their_unknown: &[u8]) -> bool {
    match e.kind {
        // RFC 7606 §3.c on an attribute they do not model and so keep without checks.
        AttributeErrorKind::Flags { .. } => their_unknown.contains(&e.type_code),
        AttributeErrorKind::Duplicate
        | AttributeErrorKind::Missing
        | AttributeErrorKind::UnrecognizedWellKnown => true,
        // RFC 7606 §7.8, §7.10, §7.14, RFC 8092 §6: an empty list is malformed.
        AttributeErrorKind::Length { length: 0 } => matches!(
            e.type_code,
            attr_type::COMMUNITIES
                | attr_type::LARGE_COMMUNITY
                | attr_type::CLUSTER_LIST
                | attr_type::EXTENDED_COMMUNITIES
        ),
        // RFC 7606 §7.9: they read the first 4 octets of a longer ORIGINATOR_ID.
        AttributeErrorKind::Length { length } if length > 4 => {
            e.type_code == attr_type::ORIGINATOR_ID
        }
        _ => false,
    }
}

fn declared_length(frame: &[u8]) -> Option<usize> {
    let len = frame.get(16..18)?;
    Some(usize::from(u16::from_be_bytes([len[0], len[1]])))
}

/// We accepted `frame`, they refused it: find the entry of the allowlist that explains
/// it, checked on both sides, or call it a disagreement.
fn explain_their_refusal(
    frame: &[u8],
    ctx: Context,
    ours: &wire::Message,
    err: &TheirError,
) -> Verdict {
    let documented = match ours {
        wire::Message::Open(o) => explain_open(frame, o, err),
        wire::Message::Update(u) => explain_update(frame, ctx, u, err),
        wire::Message::Notification(_) => err
            .has::<BgpNotificationMessageParsingError>(|e| {
                !matches!(e, BgpNotificationMessageParsingError::Parse(_))
            })
            .then_some(Difference::NotificationCode),
        wire::Message::RouteRefresh(_) => err
            .has::<BgpRouteRefreshMessageParsingError>(|e| {
                !matches!(e, BgpRouteRefreshMessageParsingError::Parse(_))
            })
            .then_some(Difference::RouteRefreshFamily),
        wire::Message::Keepalive => None,
    };
    match documented {
        Some(d) => Verdict::Documented(d),
        None => Verdict::Disagree(format!("we decode {ours:?}; they refuse: {err}")),
    }
}

fn explain_open(frame: &[u8], o: &Open, err: &TheirError) -> Option<Difference> {
    if err.has::<BgpOpenMessageParsingError>(|e| match e {
        BgpOpenMessageParsingError::UnsupportedVersionNumber { .. } => o.version != 4,
        BgpOpenMessageParsingError::UnacceptableHoldTime { .. } => {
            matches!(o.hold_time, 1 | 2)
        }
        BgpOpenMessageParsingError::InvalidBgpId { .. } => {
            let id = o.bgp_identifier;
            id.is_broadcast() || id.is_multicast() || id.is_unspecified()
        }
        _ => false,
    }) {
        return Some(Difference::OpenSessionChecks);
    }
    // Optional Parameters Length and the first parameter type both 255 (RFC 9072 §2):
    // they read the 255 as a length, so any error of theirs follows from it.
    let body = frame.get(HEADER_LEN..)?;
    if body.get(9) == Some(&255) && body.get(10) == Some(&255) {
        return Some(Difference::ExtendedOptionalParameters);
    }
    if err.has::<BgpCapabilityParsingError>(|_| true) {
        // The first capability they refuse on its own must be one we keep verbatim, or a
        // multiprotocol or extended next hop capability whose families we take as they come.
        let first_refused = capability_tlvs(body)?.into_iter().find(|tlv| {
            let mut cur = SliceReader::new(tlv);
            !(BgpCapability::parse(&mut cur).is_ok() && cur.is_empty())
        })?;
        let code = *first_refused.first()?;
        if code == MULTIPLE_LABELS {
            return Some(Difference::TheirMultipleLabels);
        }
        if !matches!(
            code,
            wire::capability_code::ROUTE_REFRESH | wire::capability_code::FOUR_OCTET_AS
        ) {
            return Some(Difference::CapabilityKeptVerbatim);
        }
    }
    None
}

/// Multiple Labels capability code (RFC 8277).
const MULTIPLE_LABELS: u8 = 8;

/// The capabilities of an OPEN body (without RFC 9072 encoding) as they are on the wire.
fn capability_tlvs(body: &[u8]) -> Option<Vec<&[u8]>> {
    let opt_len = usize::from(*body.get(9)?);
    let mut params = body.get(10..10 + opt_len)?;
    let mut out = Vec::new();
    while !params.is_empty() {
        let len = usize::from(*params.get(1)?);
        let mut caps = params.get(2..2 + len)?;
        while !caps.is_empty() {
            let clen = usize::from(*caps.get(1)?);
            out.push(caps.get(..2 + clen)?);
            caps = caps.get(2 + clen..)?;
        }
        params = params.get(2 + len..)?;
    }
    Some(out)
}

/// One path attribute as it is on the wire.
struct RawTlv<'a> {
    flags: u8,
    code: u8,
    bytes: &'a [u8],
}

/// The attribute field of an UPDATE cut into attributes; `None` where it does not
/// frame (an attribute runs past the field).
fn attribute_tlvs(frame: &[u8]) -> Option<Vec<RawTlv<'_>>> {
    let body = frame.get(HEADER_LEN..)?;
    let wlen = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let rest = body.get(2 + wlen..)?;
    let alen = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let mut field = rest.get(2..2 + alen)?;
    let mut out = Vec::new();
    while !field.is_empty() {
        let flags = *field.first()?;
        let code = *field.get(1)?;
        let (hdr, len) = if flags & wire::attr_flags::EXTENDED_LENGTH != 0 {
            (
                4,
                usize::from(u16::from_be_bytes([*field.get(2)?, *field.get(3)?])),
            )
        } else {
            (3, usize::from(*field.get(2)?))
        };
        let bytes = field.get(..hdr + len)?;
        out.push(RawTlv { flags, code, bytes });
        field = field.get(hdr + len..)?;
    }
    Some(out)
}

fn explain_update(frame: &[u8], ctx: Context, u: &Update, err: &TheirError) -> Option<Difference> {
    if declared_length(frame).is_some_and(|l| l > MAX_MESSAGE_LEN) {
        return Some(Difference::ExtendedMessage);
    }
    if err.has::<BgpUpdateMessageParsingError>(|e| {
        matches!(
            e,
            BgpUpdateMessageParsingError::InvalidIpv4UnicastNetwork { .. }
        )
    }) {
        return Some(Difference::NonUnicastPrefix);
    }
    let Some(tlvs) = attribute_tlvs(frame) else {
        // The attribute field does not frame: we stop there (RFC 7606 §4).
        return u
            .errors
            .iter()
            .any(|e| e.kind == AttributeErrorKind::Overrun)
            .then_some(Difference::Rfc7606Lenient);
    };
    // Their whole-message error is the first attribute they refuse on its own.
    let first_refused = tlvs.iter().find_map(|tlv| {
        let mut cur = SliceReader::new(tlv.bytes);
        let mut pctx = ctx.theirs();
        match NgAttribute::parse(&mut cur, &mut pctx) {
            Ok(_) if cur.is_empty() => None,
            Ok(_) => Some((tlv, None)),
            Err(e) => Some((tlv, Some(e))),
        }
    });
    let (tlv, attr_err) = first_refused?;
    let code = tlv.code;
    if u.errors.iter().any(|e| e.type_code == code) {
        return Some(Difference::Rfc7606Lenient);
    }
    let attr_err = attr_err?;
    let partial = matches!(
        attr_err,
        PathAttributeParsingError::InvalidPathAttribute {
            invalid_attribute: InvalidPathAttribute::InvalidPartialFlagValue(true),
            ..
        }
    );
    if partial && tlv.flags & wire::attr_flags::PARTIAL != 0 {
        return Some(Difference::PartialBit);
    }
    let non_unicast = chain_has::<Ipv4UnicastParsingError>(&attr_err, |e| {
        matches!(e, Ipv4UnicastParsingError::InvalidUnicastNetwork { .. })
    }) || chain_has::<Ipv6UnicastParsingError>(&attr_err, |e| {
        matches!(e, Ipv6UnicastParsingError::InvalidUnicastNetwork { .. })
    });
    if non_unicast && matches!(code, attr_type::MP_REACH_NLRI | attr_type::MP_UNREACH_NLRI) {
        return Some(Difference::NonUnicastPrefix);
    }
    let confed = u.as_path().is_some_and(|p| {
        p.segments
            .iter()
            .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
    });
    if confed
        && code == attr_type::AS_PATH
        && chain_has::<AsPathParsingError>(&attr_err, |e| {
            matches!(
                e,
                AsPathParsingError::UndefinedAsPathSegmentType { code: 3 | 4, .. }
            )
        })
    {
        return Some(Difference::ConfederationSegments);
    }
    let kept_verbatim = u
        .attributes
        .iter()
        .any(|a| matches!(a, PathAttribute::Raw(r) if r.type_code == code));
    if kept_verbatim && chain_has::<PathAttributeParsingError>(&attr_err, |_| true) {
        return Some(Difference::AttributeKeptVerbatim);
    }
    None
}

/// They accepted `frame`, we refused it.
fn explain_our_refusal(frame: &[u8], err: &wire::DecodeError, theirs: &BgpMessage) -> Verdict {
    use sharedip_bgp::wire::{DecodeError, UpdateSessionReset};
    let documented = match err {
        DecodeError::BadMessageLength { length } if usize::from(*length) > MAX_MESSAGE_LEN => {
            Some(Difference::ExtendedMessage)
        }
        DecodeError::Open(_) if has_multiple_labels(theirs) => {
            Some(Difference::TheirMultipleLabels)
        }
        DecodeError::Update(UpdateSessionReset::DuplicateMpAttribute { .. }) => {
            Some(Difference::DuplicateMpAttribute)
        }
        DecodeError::Update(UpdateSessionReset::MalformedMp {
            type_code: attr_type::MP_REACH_NLRI,
            value,
            ..
        }) if matches!(value.as_slice(), [0, 2, 1, nh_len, ..] if !matches!(nh_len, 16 | 32)) => {
            Some(Difference::TheirIpv6NextHopLength)
        }
        DecodeError::Update(UpdateSessionReset::MalformedMp {
            type_code: attr_type::MP_REACH_NLRI,
            value,
            ..
        }) if !matches!(value.as_slice(), [0, 1 | 2, 1, ..]) => {
            Some(Difference::MpHeaderOfOtherFamily)
        }
        _ => None,
    };
    match documented {
        Some(d) => Verdict::Documented(d),
        None => Verdict::Disagree(format!(
            "we refuse {} ({err}); they decode {theirs:?}",
            hex(frame)
        )),
    }
}
