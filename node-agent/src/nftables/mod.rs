//! nf_tables from the agent itself, over netlink: no `nft` binary or C library in the
//! image. The agent adds whole tables of its own in one transaction and deletes them the
//! same way, so what it installs is known by the table's name and removed all at once
//! (after a crash too). Only the expressions its rules need are encoded ([`expr`]); the tests
//! compare them with the messages `nft` itself sends for the same rules.

pub mod batch;
pub mod expr;
pub mod netlink;
pub mod wire;

pub use batch::{Chain, Hook, KeyType, Op, Set, Table};
pub use expr::{Base, CmpOp, Expr, MetaKey, Verdict};
pub use netlink::{apply, counters, delete_table, set_len, tables, NftError, RuleCounter};
pub use wire::Family;

#[cfg(test)]
mod tests;
