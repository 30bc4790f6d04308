//! In-memory doubles of the binder and the speaker, recording every call in one ordered log so a
//! test can check the order the agent keeps (bind before announce, withdraw before unbind).
//!
//! Compiled only for tests: the crate's unit tests, and, through the `testing` feature that the
//! crate's dev-dependency on itself enables, its integration tests. The shipped binary's library
//! does not contain them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::binder::{host_prefix_len, AddressBinding, BindError, BoundBy, InterfaceAddress};
use crate::community::RoleCommunity;
use crate::prefix::AnnouncedPrefix;
use crate::speaker::Announcer;

/// One call to the fake binder or the fake announcer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Bind(IpAddr),
    Unbind(IpAddr),
    Announce(String),
    Withdraw(String),
    FastRetry,
    Shutdown,
}

/// A shared, ordered log of operations.
pub type OpLog = Arc<Mutex<Vec<Op>>>;

fn push(log: &OpLog, op: Op) {
    if let Ok(mut l) = log.lock() {
        l.push(op);
    }
}

/// Binder that keeps its addresses in memory.
#[derive(Debug, Default, Clone)]
pub struct FakeBinder {
    /// Operations so far (shared with a fake announcer to check ordering).
    pub log: OpLog,
    /// Addresses currently bound.
    pub bound: Arc<Mutex<BTreeSet<IpAddr>>>,
    /// Addresses whose bind fails.
    pub fail: Arc<Mutex<BTreeSet<IpAddr>>>,
    /// Addresses already on the node, configured by the user.
    pub user: Arc<Mutex<BTreeSet<IpAddr>>>,
    /// What [`AddressBinding::interface_addresses`] reports (the bound addresses are added
    /// on `lo`, as ours).
    pub interfaces: Arc<Mutex<Vec<InterfaceAddress>>>,
}

impl FakeBinder {
    /// A fake writing to `log`.
    pub fn with_log(log: OpLog) -> Self {
        Self {
            log,
            ..Default::default()
        }
    }

    /// What is bound now.
    pub fn bound(&self) -> BTreeSet<IpAddr> {
        self.bound.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl AddressBinding for FakeBinder {
    async fn bind(&self, addr: IpAddr, _prefix_len: u8) -> Result<BoundBy, BindError> {
        if self.fail.lock().is_ok_and(|f| f.contains(&addr)) {
            return Err(BindError::InvalidAddress {
                address: addr,
                reason: "injected failure",
            });
        }
        if self.user.lock().is_ok_and(|u| u.contains(&addr)) {
            return Ok(BoundBy::User);
        }
        push(&self.log, Op::Bind(addr));
        if let Ok(mut b) = self.bound.lock() {
            b.insert(addr);
        }
        Ok(BoundBy::Agent)
    }

    async fn unbind(&self, addr: IpAddr) -> Result<(), BindError> {
        push(&self.log, Op::Unbind(addr));
        if let Ok(mut b) = self.bound.lock() {
            b.remove(&addr);
        }
        Ok(())
    }

    async fn reconcile_leftovers(&self, keep: &BTreeSet<IpAddr>) -> Result<Vec<IpAddr>, BindError> {
        let gone: Vec<IpAddr> = self
            .bound()
            .into_iter()
            .filter(|a| !keep.contains(a))
            .collect();
        for a in &gone {
            self.unbind(*a).await?;
        }
        Ok(gone)
    }

    async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindError> {
        let mut out = self
            .interfaces
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default();
        out.extend(self.bound().into_iter().map(|address| InterfaceAddress {
            interface: "lo".into(),
            address,
            prefix_len: host_prefix_len(address),
            ours: true,
        }));
        Ok(out)
    }
}

/// Announcer that records announce/withdraw/shutdown into the shared log.
#[derive(Debug, Clone)]
pub struct FakeAnnouncer {
    /// Shared with the fake binder.
    pub log: OpLog,
    /// Sessions reported as established.
    pub established: usize,
    /// Sessions reported as configured.
    pub total: usize,
}

impl FakeAnnouncer {
    /// A fake with 4 of 4 sessions up.
    pub fn new(log: OpLog) -> Self {
        Self {
            log,
            established: 4,
            total: 4,
        }
    }
}

impl Announcer for FakeAnnouncer {
    fn announce(&mut self, prefix: AnnouncedPrefix, community: RoleCommunity) {
        let route = community.route(prefix.prefix());
        let c: Vec<String> = route
            .communities
            .iter()
            .map(ToString::to_string)
            .chain(route.large_communities.iter().map(ToString::to_string))
            .collect();
        push(
            &self.log,
            Op::Announce(format!("{} {}", route.prefix, c.join(","))),
        );
    }

    fn withdraw(&mut self, prefix: AnnouncedPrefix) {
        push(&self.log, Op::Withdraw(prefix.to_string()));
    }

    fn fast_retry(&self) -> bool {
        push(&self.log, Op::FastRetry);
        true
    }

    fn established(&self) -> usize {
        self.established
    }

    fn total(&self) -> usize {
        self.total
    }

    async fn shutdown(&mut self, _message: &str) {
        push(&self.log, Op::Shutdown);
    }
}
