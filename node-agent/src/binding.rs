//! The agent's view of the address binder: what it needs, as a trait, so the orchestration is
//! tested with an in-memory fake and runs with the rtnetlink [`crate::binder::Binder`] for real.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;

use crate::binder::InterfaceAddress;

/// Who put an address on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundBy {
    /// The agent bound it, and removes it when it is no longer wanted.
    Agent,
    /// It was there already, configured by the user (or the system): the agent announces it
    /// but never removes it.
    User,
}

/// A binding failure, reduced to its message: the agent only reports and retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindingError(pub String);

/// Puts shared addresses on the node and takes them off again.
///
/// Implementations are idempotent and never remove an address they did not add.
pub trait AddressBinding: Send + Sync {
    /// Binds `addr` (IPv4 as /32, IPv6 as /128), unless it is on the node already; says who
    /// put it there.
    fn bind(
        &self,
        addr: IpAddr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<BoundBy, BindingError>> + Send;
    /// Removes `addr` if this binder added it.
    fn unbind(&self, addr: IpAddr) -> impl Future<Output = Result<(), BindingError>> + Send;
    /// Removes addresses added by an earlier run that are not in `keep`; returns them.
    fn reconcile_leftovers(
        &self,
        keep: &BTreeSet<IpAddr>,
    ) -> impl Future<Output = Result<Vec<IpAddr>, BindingError>> + Send;
    /// Every address on every interface of the node, with whether the agent bound it.
    fn interface_addresses(
        &self,
    ) -> impl Future<Output = Result<Vec<InterfaceAddress>, BindingError>> + Send;
}

impl AddressBinding for crate::binder::Binder {
    async fn bind(&self, addr: IpAddr, prefix_len: u8) -> Result<BoundBy, BindingError> {
        let outcome = crate::binder::Binder::bind(self, addr, prefix_len)
            .await
            .map_err(|e| BindingError(e.to_string()))?;
        tracing::debug!(%addr, ?outcome, "bound");
        Ok(match outcome {
            crate::binder::BindOutcome::Added | crate::binder::BindOutcome::AlreadyOurs => {
                BoundBy::Agent
            }
            crate::binder::BindOutcome::PresentNotOurs => BoundBy::User,
        })
    }

    async fn unbind(&self, addr: IpAddr) -> Result<(), BindingError> {
        crate::binder::Binder::unbind(self, addr)
            .await
            .map_err(|e| BindingError(e.to_string()))
    }

    async fn reconcile_leftovers(
        &self,
        keep: &BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, BindingError> {
        crate::binder::Binder::reconcile_leftovers(self, keep)
            .await
            .map_err(|e| BindingError(e.to_string()))
    }

    async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindingError> {
        crate::binder::Binder::interface_addresses(self)
            .await
            .map_err(|e| BindingError(e.to_string()))
    }
}

/// For standalone mode without `--address` (lelastic's behaviour): the addresses are already
/// on the node, put there by the user, so nothing is bound or unbound. What an earlier run of
/// the agent bound (with `--address`, before a crash or a restart without it) is not the
/// user's: the inner binder removes all of it as leftovers, whatever `keep` says.
#[derive(Debug)]
pub struct UserConfigured<B>(pub B);

impl<B: AddressBinding> AddressBinding for UserConfigured<B> {
    async fn bind(&self, _addr: IpAddr, _prefix_len: u8) -> Result<BoundBy, BindingError> {
        Ok(BoundBy::User)
    }

    async fn unbind(&self, _addr: IpAddr) -> Result<(), BindingError> {
        Ok(())
    }

    async fn reconcile_leftovers(
        &self,
        _keep: &BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, BindingError> {
        self.0.reconcile_leftovers(&BTreeSet::new()).await
    }

    async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindingError> {
        self.0.interface_addresses().await
    }
}

/// In-memory binder for tests: records every call in a shared log.
pub mod fake {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use super::{AddressBinding, BindingError, BoundBy};
    use crate::binder::InterfaceAddress;

    /// One call to the fake binder or the fake announcer, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Bind(IpAddr),
        Unbind(IpAddr),
        Announce(String),
        Withdraw(String),
        Shutdown,
    }

    /// A shared, ordered log of operations.
    pub type OpLog = Arc<Mutex<Vec<Op>>>;

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

        fn push(&self, op: Op) {
            if let Ok(mut l) = self.log.lock() {
                l.push(op);
            }
        }
    }

    impl AddressBinding for FakeBinder {
        async fn bind(&self, addr: IpAddr, _prefix_len: u8) -> Result<BoundBy, BindingError> {
            if self.fail.lock().is_ok_and(|f| f.contains(&addr)) {
                return Err(BindingError(format!(
                    "cannot bind {addr}: injected failure"
                )));
            }
            if self.user.lock().is_ok_and(|u| u.contains(&addr)) {
                return Ok(BoundBy::User);
            }
            self.push(Op::Bind(addr));
            if let Ok(mut b) = self.bound.lock() {
                b.insert(addr);
            }
            Ok(BoundBy::Agent)
        }

        async fn unbind(&self, addr: IpAddr) -> Result<(), BindingError> {
            self.push(Op::Unbind(addr));
            if let Ok(mut b) = self.bound.lock() {
                b.remove(&addr);
            }
            Ok(())
        }

        async fn reconcile_leftovers(
            &self,
            keep: &BTreeSet<IpAddr>,
        ) -> Result<Vec<IpAddr>, BindingError> {
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

        async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindingError> {
            let mut out = self
                .interfaces
                .lock()
                .map(|i| i.clone())
                .unwrap_or_default();
            out.extend(self.bound().into_iter().map(|address| InterfaceAddress {
                interface: "lo".into(),
                address,
                prefix_len: crate::binder::host_prefix_len(address),
                ours: true,
            }));
            Ok(out)
        }
    }
}
