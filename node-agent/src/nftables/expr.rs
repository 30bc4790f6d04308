//! nf_tables expressions: the bytecode of a rule (`nft --debug=netlink` prints it the same
//! way), each encoded as libnftnl does, attribute for attribute, so captured `nft` messages
//! are the reference of the tests.

use super::wire::{
    Attrs, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_VERDICT_CODE,
};

/// The verdict register.
pub const REG_VERDICT: u32 = 0;
/// The first 16-byte data register (`reg 1`).
pub const REG_1: u32 = 1;
/// The 32-bit registers overlapping [`REG_1`]: `reg 9` is its second word, where a
/// concatenation puts its second field.
pub const REG32_00: u32 = 8;

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
        }
    }
}

/// `meta` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Ethertype (netdev) / link-layer protocol, 2 bytes, network order.
    Protocol = 1,
    /// Packet mark.
    Mark = 3,
    /// Input interface name, 16 bytes.
    IifName = 6,
    /// Input interface's ARPHRD type, 2 bytes.
    IifType = 8,
    /// The hook's family (inet chains see IPv4 and IPv6), 1 byte.
    NfProto = 15,
    /// Transport protocol, 1 byte.
    L4Proto = 16,
}

/// Where a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Link = 0,
    Network = 1,
    Transport = 2,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Gt = 4,
}

/// One expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load <key> => reg`.
    Meta { key: MetaKey, dreg: u32 },
    /// `meta set <key> with reg`.
    MetaSet { key: MetaKey, sreg: u32 },
    /// `cmp <op> reg <data>`.
    Cmp { op: CmpOp, sreg: u32, data: Vec<u8> },
    /// `payload load <len>b @ <base> + <offset> => reg`.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `payload write reg => <len>b @ <base> + <offset>`, no checksum to fix: only for the
    /// link-layer header.
    PayloadWrite {
        base: Base,
        offset: u32,
        len: u32,
        sreg: u32,
    },
    /// `bitwise reg = (reg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `immediate reg <data>`.
    Immediate { dreg: u32, data: Vec<u8> },
    /// `immediate reg 0 <verdict>`.
    Verdict(Verdict),
    /// `lookup reg set <name>`: breaks unless the key is in the set. `set_id` names a set
    /// made in the same transaction.
    Lookup { set: String, set_id: u32, sreg: u32 },
    /// `dynset update reg_key set <name>`: adds the key (or refreshes its timeout).
    DynsetUpdate {
        set: String,
        set_id: u32,
        sreg_key: u32,
    },
    /// `counter`.
    Counter,
    /// `fwd sreg_dev reg`: transmits the packet on the device whose index is in reg.
    Fwd { sreg_dev: u32 },
    /// `ct load state => reg`.
    CtState { dreg: u32 },
    /// `exthdr load tcpopt <len>b @ <kind> + <offset> => reg`.
    TcpOption {
        kind: u8,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `exthdr write tcpopt reg => <len>b @ <kind> + <offset>`.
    TcpOptionWrite {
        kind: u8,
        offset: u32,
        len: u32,
        sreg: u32,
    },
}

// Attribute numbers of each expression, from linux/netfilter/nf_tables.h.
const META_DREG: u16 = 1;
const META_KEY: u16 = 2;
const META_SREG: u16 = 3;
const CMP_SREG: u16 = 1;
const CMP_OP: u16 = 2;
const CMP_DATA: u16 = 3;
const PAYLOAD_DREG: u16 = 1;
const PAYLOAD_BASE: u16 = 2;
const PAYLOAD_OFFSET: u16 = 3;
const PAYLOAD_LEN: u16 = 4;
const PAYLOAD_SREG: u16 = 5;
const BITWISE_SREG: u16 = 1;
const BITWISE_DREG: u16 = 2;
const BITWISE_LEN: u16 = 3;
const BITWISE_MASK: u16 = 4;
const BITWISE_XOR: u16 = 5;
const BITWISE_OP: u16 = 6;
const BITWISE_OP_BOOL: u32 = 0;
const IMMEDIATE_DREG: u16 = 1;
const IMMEDIATE_DATA: u16 = 2;
const LOOKUP_SET: u16 = 1;
const LOOKUP_SREG: u16 = 2;
const LOOKUP_SET_ID: u16 = 4;
const DYNSET_SET_NAME: u16 = 1;
const DYNSET_SET_ID: u16 = 2;
const DYNSET_OP: u16 = 3;
const DYNSET_SREG_KEY: u16 = 4;
const DYNSET_OP_UPDATE: u32 = 1;
const FWD_SREG_DEV: u16 = 1;
const CT_DREG: u16 = 1;
const CT_KEY: u16 = 2;
const CT_KEY_STATE: u32 = 0;
const EXTHDR_DREG: u16 = 1;
const EXTHDR_TYPE: u16 = 2;
const EXTHDR_OFFSET: u16 = 3;
const EXTHDR_LEN: u16 = 4;
const EXTHDR_FLAGS: u16 = 5;
const EXTHDR_OP: u16 = 6;
const EXTHDR_SREG: u16 = 7;
const EXTHDR_OP_TCPOPT: u32 = 1;

fn data(a: &mut Attrs, kind: u16, value: &[u8]) {
    a.nested(kind, |d| {
        d.bytes(NFTA_DATA_VALUE, value);
    });
}

/// Shorthands for the expressions rules are mostly made of, loading into and comparing
/// register 1 (the rest are written out).
impl Expr {
    /// `meta <key>` into register 1.
    pub fn meta(key: MetaKey) -> Self {
        Expr::Meta { key, dreg: REG_1 }
    }

    /// Compares register 1 with `data`.
    pub fn cmp(op: CmpOp, data: &[u8]) -> Self {
        Expr::Cmp {
            op,
            sreg: REG_1,
            data: data.to_vec(),
        }
    }

    /// `len` bytes at `offset` of header `base` into register `dreg`.
    pub fn load(base: Base, offset: u32, len: u32, dreg: u32) -> Self {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        }
    }

    /// Register 1 AND `mask`.
    pub fn mask(mask: &[u8]) -> Self {
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_vec(),
            xor: vec![0; mask.len()],
        }
    }

    /// The `accept` verdict.
    pub fn accept() -> Self {
        Expr::Verdict(Verdict::Accept)
    }
}

impl Expr {
    /// The expression's name in the kernel.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } | Expr::PayloadWrite { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::DynsetUpdate { .. } => "dynset",
            Expr::Counter => "counter",
            Expr::Fwd { .. } => "fwd",
            Expr::CtState { .. } => "ct",
            Expr::TcpOption { .. } | Expr::TcpOptionWrite { .. } => "exthdr",
        }
    }

    /// Appends this expression as one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn encode(&self, list: &mut Attrs) {
        list.nested(super::wire::NFTA_LIST_ELEM, |e| {
            e.string(NFTA_EXPR_NAME, self.name());
            e.nested(NFTA_EXPR_DATA, |d| self.encode_data(d));
        });
    }

    fn encode_data(&self, d: &mut Attrs) {
        match self {
            Expr::Meta { .. }
            | Expr::MetaSet { .. }
            | Expr::Payload { .. }
            | Expr::PayloadWrite { .. }
            | Expr::CtState { .. }
            | Expr::TcpOption { .. }
            | Expr::TcpOptionWrite { .. } => self.encode_access(d),
            _ => self.encode_logic(d),
        }
    }

    /// Expressions that read or write the packet or its metadata.
    fn encode_access(&self, d: &mut Attrs) {
        match self {
            Expr::Meta { key, dreg } => {
                d.u32(META_KEY, *key as u32).u32(META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                d.u32(META_KEY, *key as u32).u32(META_SREG, *sreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                d.u32(PAYLOAD_DREG, *dreg)
                    .u32(PAYLOAD_BASE, *base as u32)
                    .u32(PAYLOAD_OFFSET, *offset)
                    .u32(PAYLOAD_LEN, *len);
            }
            Expr::PayloadWrite {
                base,
                offset,
                len,
                sreg,
            } => {
                d.u32(PAYLOAD_SREG, *sreg)
                    .u32(PAYLOAD_BASE, *base as u32)
                    .u32(PAYLOAD_OFFSET, *offset)
                    .u32(PAYLOAD_LEN, *len);
            }
            Expr::CtState { dreg } => {
                d.u32(CT_KEY, CT_KEY_STATE).u32(CT_DREG, *dreg);
            }
            Expr::TcpOption {
                kind,
                offset,
                len,
                dreg,
            } => {
                d.u32(EXTHDR_DREG, *dreg)
                    .bytes(EXTHDR_TYPE, &[*kind])
                    .u32(EXTHDR_OFFSET, *offset)
                    .u32(EXTHDR_LEN, *len)
                    .u32(EXTHDR_OP, EXTHDR_OP_TCPOPT)
                    .u32(EXTHDR_FLAGS, 0);
            }
            Expr::TcpOptionWrite {
                kind,
                offset,
                len,
                sreg,
            } => {
                d.u32(EXTHDR_SREG, *sreg)
                    .bytes(EXTHDR_TYPE, &[*kind])
                    .u32(EXTHDR_OFFSET, *offset)
                    .u32(EXTHDR_LEN, *len)
                    .u32(EXTHDR_OP, EXTHDR_OP_TCPOPT);
            }
            _ => {}
        }
    }

    /// Comparisons, data, sets and verdicts.
    fn encode_logic(&self, d: &mut Attrs) {
        match self {
            Expr::Cmp { op, sreg, data: v } => {
                d.u32(CMP_SREG, *sreg).u32(CMP_OP, *op as u32);
                data(d, CMP_DATA, v);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
                d.u32(BITWISE_SREG, *sreg)
                    .u32(BITWISE_DREG, *dreg)
                    .u32(BITWISE_OP, BITWISE_OP_BOOL)
                    .u32(BITWISE_LEN, len);
                data(d, BITWISE_MASK, mask);
                data(d, BITWISE_XOR, xor);
            }
            Expr::Immediate { dreg, data: v } => {
                d.u32(IMMEDIATE_DREG, *dreg);
                data(d, IMMEDIATE_DATA, v);
            }
            Expr::Verdict(v) => {
                d.u32(IMMEDIATE_DREG, REG_VERDICT);
                d.nested(IMMEDIATE_DATA, |data| {
                    data.nested(NFTA_DATA_VERDICT, |verdict| {
                        verdict.u32(NFTA_VERDICT_CODE, v.code());
                    });
                });
            }
            Expr::Lookup { set, set_id, sreg } => {
                d.string(LOOKUP_SET, set)
                    .u32(LOOKUP_SREG, *sreg)
                    .u32(LOOKUP_SET_ID, *set_id);
            }
            Expr::DynsetUpdate {
                set,
                set_id,
                sreg_key,
            } => {
                d.u32(DYNSET_SREG_KEY, *sreg_key)
                    .u32(DYNSET_OP, DYNSET_OP_UPDATE)
                    .string(DYNSET_SET_NAME, set)
                    .u32(DYNSET_SET_ID, *set_id);
            }
            // Counts from zero; the kernel keeps the numbers.
            Expr::Counter => {}
            Expr::Fwd { sreg_dev } => {
                d.u32(FWD_SREG_DEV, *sreg_dev);
            }
            _ => {}
        }
    }
}

/// Encodes a rule's expressions as the value of `NFTA_RULE_EXPRESSIONS`.
pub fn encode_list(exprs: &[Expr]) -> Vec<u8> {
    let mut list = Attrs::new();
    for e in exprs {
        e.encode(&mut list);
    }
    list.into_bytes()
}
