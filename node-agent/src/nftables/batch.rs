//! An nf_tables transaction: the tables, chains, sets and rules to add (or the tables to
//! delete), encoded as one netlink batch that the kernel applies all or nothing.

use super::expr::{encode_list, Expr, Verdict};
use super::wire::*;

/// A hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// netdev: a device's ingress.
    Ingress,
    /// inet: before routing.
    Prerouting,
    /// inet: after routing, every packet leaving.
    Postrouting,
}

impl Hook {
    fn number(self) -> u32 {
        match self {
            Hook::Ingress | Hook::Prerouting => 0,
            Hook::Postrouting => 4,
        }
    }
}

/// A base chain of type filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Hook,
    pub priority: i32,
    /// The device of a netdev ingress chain.
    pub device: Option<String>,
    pub policy: Verdict,
}

/// A data type of a set key (nft's numbers; a concatenation combines them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetService,
}

impl KeyType {
    fn number(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::InetService => 13,
        }
    }

    /// Bytes in registers: every field of a concatenation starts on a 4-byte boundary.
    fn register_len(self) -> u32 {
        match self {
            KeyType::Ipv4Addr | KeyType::InetService => 4,
            KeyType::Ipv6Addr => 16,
        }
    }
}

/// A set the rules add to (with a timeout per element) and look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Its id within the transaction (the rules refer to it by name and id).
    pub id: u32,
    pub key: Vec<KeyType>,
    /// Elements expire this long after they were last added or updated.
    pub timeout_ms: u64,
    /// Elements to start with.
    pub elements: Vec<Vec<u8>>,
}

impl Set {
    /// nft's type number of a concatenation: each field's number shifted in, 6 bits each.
    fn key_type(&self) -> u32 {
        self.key.iter().fold(0, |acc, k| (acc << 6) | k.number())
    }

    fn key_len(&self) -> u32 {
        self.key.iter().map(|k| k.register_len()).sum()
    }
}

/// A table and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: Vec<Chain>,
    pub sets: Vec<Set>,
    /// (chain name, expressions), in order.
    pub rules: Vec<(String, Vec<Expr>)>,
}

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds the table with its chains, sets and rules (refused if it exists).
    Add(Table),
    /// Deletes a table and all it holds.
    Delete { family: Family, name: String },
}

/// Messages of a batch being written, numbered from the first one's `seq`.
struct Encoder {
    out: Vec<u8>,
    seq: u32,
    acked: u32,
}

impl Encoder {
    fn push(&mut self, kind: u16, flags: u16, family: Family, attrs: Attrs) {
        self.out.extend(message(
            nft_type(kind),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            family.number(),
            0,
            &attrs.into_bytes(),
        ));
        self.seq = self.seq.wrapping_add(1);
        self.acked += 1;
    }

    fn table(&mut self, t: &Table) {
        let mut a = Attrs::new();
        a.string(NFTA_TABLE_NAME, &t.name).u32(NFTA_TABLE_FLAGS, 0);
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, t.family, a);
        for c in &t.chains {
            self.chain(t, c);
        }
        for s in &t.sets {
            self.set(t, s);
        }
        for (chain, exprs) in &t.rules {
            let mut a = Attrs::new();
            a.string(NFTA_RULE_TABLE, &t.name)
                .string(NFTA_RULE_CHAIN, chain)
                .bytes(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &encode_list(exprs));
            self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, t.family, a);
        }
    }

    fn chain(&mut self, t: &Table, c: &Chain) {
        let policy = match c.policy {
            Verdict::Accept => 1,
            Verdict::Drop => 0,
        };
        let mut a = Attrs::new();
        a.string(NFTA_CHAIN_TABLE, &t.name)
            .string(NFTA_CHAIN_NAME, &c.name)
            .string(NFTA_CHAIN_TYPE, "filter")
            .u32(NFTA_CHAIN_POLICY, policy)
            .nested(NFTA_CHAIN_HOOK, |h| {
                h.u32(NFTA_HOOK_HOOKNUM, c.hook.number())
                    .bytes(NFTA_HOOK_PRIORITY, &c.priority.to_be_bytes());
                if let Some(dev) = &c.device {
                    h.string(NFTA_HOOK_DEV, dev);
                }
            });
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, t.family, a);
    }

    fn set(&mut self, t: &Table, s: &Set) {
        let mut a = Attrs::new();
        // A hash set, as nft makes for `flags dynamic,timeout`: a concatenated key needs
        // no more than its type and length.
        a.string(NFTA_SET_TABLE, &t.name)
            .string(NFTA_SET_NAME, &s.name)
            .u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL)
            .u32(NFTA_SET_KEY_TYPE, s.key_type())
            .u32(NFTA_SET_KEY_LEN, s.key_len())
            .u32(NFTA_SET_ID, s.id)
            .u64(NFTA_SET_TIMEOUT, s.timeout_ms);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, t.family, a);
        if s.elements.is_empty() {
            return;
        }
        let mut a = Attrs::new();
        a.string(NFTA_SET_ELEM_LIST_TABLE, &t.name)
            .string(NFTA_SET_ELEM_LIST_SET, &s.name)
            .u32(NFTA_SET_ID, s.id)
            .nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for e in &s.elements {
                    list.nested(NFTA_LIST_ELEM, |el| {
                        el.nested(NFTA_SET_ELEM_KEY, |k| {
                            k.bytes(NFTA_DATA_VALUE, e);
                        });
                    });
                }
            });
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, t.family, a);
    }
}

/// Encodes `ops` as one batch; `seq` numbers its first message (the others follow), so the
/// kernel's answers can be matched. Returns the bytes and how many answers to expect.
pub fn encode(ops: &[Op], seq: u32) -> (Vec<u8>, u32) {
    let mut e = Encoder {
        out: message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        ),
        seq,
        acked: 0,
    };
    for op in ops {
        match op {
            Op::Delete { family, name } => {
                let mut a = Attrs::new();
                a.string(NFTA_TABLE_NAME, name);
                e.push(NFT_MSG_DELTABLE, 0, *family, a);
            }
            Op::Add(t) => e.table(t),
        }
    }
    let end = message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        e.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    e.out.extend(end);
    (e.out, e.acked)
}
