//! Thread-safe access to the account, publishing the sharing view on every change.

use super::account::{Account, Pools};
use super::error::ApiError;
use super::model::{Ipv4Address, Ipv6Range, Linode, LinodeId, NewIpv4, NewIpv6Range, NewLinode};
use super::seed::Seed;
use super::sharing::SharingSnapshot;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// The stand-in's state. Cheap to share behind an `Arc`; every method is atomic.
#[derive(Debug)]
pub struct StandInState {
    account: Mutex<Account>,
    sharing: watch::Sender<SharingSnapshot>,
}

impl StandInState {
    /// An empty account.
    pub fn new(pools: Pools) -> Self {
        let (sharing, _) = watch::channel(SharingSnapshot::default());
        Self {
            account: Mutex::new(Account::new(pools)),
            sharing,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Account> {
        sharedip_process::sync::lock(&self.account)
    }

    /// Reads the account.
    pub fn read<T>(&self, f: impl FnOnce(&Account) -> T) -> T {
        f(&self.lock())
    }

    /// Changes the account; if the sharing view changed, publishes it with a new version.
    /// `f` must leave the account untouched when it fails (every [`Account`] method does).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Account) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut acct = self.lock();
        let out = f(&mut acct)?;
        let ips = acct.sharing().ips;
        // Published while the lock is held so subscribers see changes in order.
        self.sharing.send_if_modified(|snap| {
            if snap.ips == ips {
                false
            } else {
                snap.ips = ips;
                snap.version += 1;
                true
            }
        });
        Ok(out)
    }

    /// Receives the sharing view now and after every change.
    pub fn subscribe(&self) -> watch::Receiver<SharingSnapshot> {
        self.sharing.subscribe()
    }

    /// The current sharing view.
    pub fn sharing(&self) -> SharingSnapshot {
        self.sharing.borrow().clone()
    }

    /// Creates a Linode.
    pub fn create_linode(&self, spec: &NewLinode) -> Result<Linode, ApiError> {
        self.write(|a| a.create_linode(spec))
    }

    /// Adds an IPv4 address owned by a Linode.
    pub fn add_ipv4(&self, spec: &NewIpv4) -> Result<Ipv4Address, ApiError> {
        self.write(|a| a.add_ipv4(spec))
    }

    /// Adds an IPv6 range routed to a Linode.
    pub fn add_ipv6_range(&self, spec: &NewIpv6Range) -> Result<Ipv6Range, ApiError> {
        self.write(|a| a.add_range(spec))
    }

    /// Sets a Linode's whole shared list, with the share call's validation (no faults, not logged).
    pub fn share(&self, linode_id: LinodeId, ips: &[&str]) -> Result<(), ApiError> {
        let ips: Vec<String> = ips.iter().map(|s| (*s).to_owned()).collect();
        self.write(|a| a.set_shared(linode_id, &ips)).map(|_| ())
    }

    /// Deletes a Linode with its addresses and shares.
    pub fn delete_linode(&self, id: LinodeId) -> Result<(), ApiError> {
        self.write(|a| a.delete_linode(id))
    }

    /// A Linode by ID.
    pub fn linode(&self, id: LinodeId) -> Option<Linode> {
        self.read(|a| a.linodes.get(&id).cloned())
    }

    /// The addresses shared with a Linode (its shared list), as the share call takes them.
    pub fn shared_list(&self, id: LinodeId) -> Vec<String> {
        self.read(|a| a.shared_list(id).map(ToString::to_string).collect())
    }

    /// Applies a seed, all or nothing.
    pub fn apply_seed(&self, seed: &Seed) -> Result<(), ApiError> {
        self.write(|a| {
            let mut copy = a.clone();
            seed.apply(&mut copy)?;
            *a = copy;
            Ok(())
        })
    }

    /// The whole state in seed format (reloadable with `--seed`).
    pub fn dump(&self) -> Seed {
        self.read(Seed::from_account)
    }

    /// Removes everything (pools are kept).
    pub fn reset(&self) {
        // Never fails; `write` keeps the publish logic in one place.
        let _ = self.write(|a| {
            *a = Account::new(a.pools.clone());
            Ok(())
        });
    }
}
