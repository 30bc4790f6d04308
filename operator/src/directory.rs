//! A cached view of the account: its Linodes (for regions) and its addresses (for owner and
//! region of each shared address).
//!
//! A thousand SharedIPs reconciling at start-up would otherwise make a thousand
//! `GET /networking/ips/{address}` calls; listing the account in pages of 500 and reusing the
//! result for a while costs a handful. A miss (a Linode or address created a moment ago) forces a
//! refresh, at most once per `min_refresh`, so new objects are found quickly without letting a
//! typo in a SharedIP hammer the API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sharedip_api::SharedAddress;
use tokio::sync::{Mutex, RwLock};

use crate::linode_api::{AddressInfo, ApiResult, DynLinodeApi, LinodeInfo};
use crate::selection::LinodeFacts;

#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// A listing younger than this is used without asking the API.
    pub ttl: Duration,
    /// A miss refreshes a listing only when it is at least this old.
    pub min_refresh: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            min_refresh: Duration::from_secs(5),
        }
    }
}

struct Listing<T> {
    items: T,
    at: Option<Instant>,
}

impl<T: Default> Default for Listing<T> {
    fn default() -> Self {
        Self {
            items: T::default(),
            at: None,
        }
    }
}

impl<T> Listing<T> {
    fn age(&self) -> Option<Duration> {
        self.at.map(|a| a.elapsed())
    }
}

pub struct Directory {
    api: DynLinodeApi,
    config: DirectoryConfig,
    linodes: RwLock<Listing<HashMap<u64, LinodeInfo>>>,
    addresses: RwLock<Listing<Vec<AddressInfo>>>,
    // One refresh at a time per listing: concurrent reconciles wait for it instead of each
    // listing the account.
    linodes_refresh: Mutex<()>,
    addresses_refresh: Mutex<()>,
}

/// A copy of the Linode listing, for the synchronous placement rules.
pub struct LinodeSnapshot(pub HashMap<u64, LinodeInfo>);

impl LinodeFacts for LinodeSnapshot {
    fn region_of(&self, linode: u64) -> Option<String> {
        self.0.get(&linode).map(|l| l.region.clone())
    }
}

impl Directory {
    pub fn new(api: DynLinodeApi, config: DirectoryConfig) -> Self {
        Self {
            api,
            config,
            linodes: RwLock::default(),
            addresses: RwLock::default(),
            linodes_refresh: Mutex::new(()),
            addresses_refresh: Mutex::new(()),
        }
    }

    fn needs_refresh(&self, age: Option<Duration>, missing: bool) -> bool {
        match age {
            None => true,
            Some(a) if a >= self.config.ttl => true,
            Some(a) => missing && a >= self.config.min_refresh,
        }
    }

    /// The Linodes of the account, refreshed when stale or when one of `wanted` is unknown.
    pub async fn linodes(&self, wanted: &[u64]) -> ApiResult<LinodeSnapshot> {
        {
            let l = self.linodes.read().await;
            let missing = wanted.iter().any(|w| !l.items.contains_key(w));
            if !self.needs_refresh(l.age(), missing) {
                return Ok(LinodeSnapshot(l.items.clone()));
            }
        }
        let _guard = self.linodes_refresh.lock().await;
        {
            // Someone else may have refreshed while we waited for the lock.
            let l = self.linodes.read().await;
            let missing = wanted.iter().any(|w| !l.items.contains_key(w));
            if !self.needs_refresh(l.age(), missing) {
                return Ok(LinodeSnapshot(l.items.clone()));
            }
        }
        let fresh = self.api.list_linodes().await?;
        let mut l = self.linodes.write().await;
        l.items = fresh.into_iter().map(|i| (i.id, i)).collect();
        l.at = Some(Instant::now());
        Ok(LinodeSnapshot(l.items.clone()))
    }

    /// Drops the cached address listing: an address just moved between Linodes must be seen
    /// with its new owner by the next lookup.
    pub async fn forget_addresses(&self) {
        self.addresses.write().await.at = None;
    }

    /// The account's address or range that holds `addr`, if any.
    pub async fn address(&self, addr: &SharedAddress) -> ApiResult<Option<AddressInfo>> {
        {
            let a = self.addresses.read().await;
            let found = find(&a.items, addr);
            if !self.needs_refresh(a.age(), found.is_none()) {
                return Ok(found);
            }
        }
        let _guard = self.addresses_refresh.lock().await;
        {
            let a = self.addresses.read().await;
            let found = find(&a.items, addr);
            if !self.needs_refresh(a.age(), found.is_none()) {
                return Ok(found);
            }
        }
        let fresh = self.api.list_addresses().await?;
        let mut a = self.addresses.write().await;
        a.items = fresh;
        a.at = Some(Instant::now());
        Ok(find(&a.items, addr))
    }
}

fn find(items: &[AddressInfo], addr: &SharedAddress) -> Option<AddressInfo> {
    items.iter().find(|i| contains(i, addr.address())).cloned()
}

fn contains(info: &AddressInfo, addr: IpAddr) -> bool {
    match (info.network, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => n == a,
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let p = u32::from(info.prefix.min(128));
            if p == 0 {
                return true;
            }
            let mask = u128::MAX << (128 - p);
            (u128::from(n) & mask) == (u128::from(a) & mask)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_linode::FakeLinode;

    #[tokio::test]
    async fn finds_ipv4_and_ranges_and_caches() {
        let fake = FakeLinode::with_linodes(&[1]);
        fake.add_address("192.0.2.10", 32, "us-east", Some(1));
        fake.add_address("2001:db8:1:2::", 64, "us-east", Some(1));
        let d = Directory::new(fake.clone(), DirectoryConfig::default());
        let a = d
            .address(&SharedAddress::parse("192.0.2.10", None).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.owner, Some(1));
        let r = d
            .address(&SharedAddress::parse("2001:db8:1:2::abcd", Some(64)).unwrap())
            .await
            .unwrap();
        assert!(r.is_some());
        // The containing range is found whatever the spec's prefix; the reconciler reports a
        // prefix that differs from the range's.
        let r = d
            .address(&SharedAddress::parse("2001:db8:1:2::abcd", Some(56)).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.prefix, 64);
        let calls = fake.list_calls();
        // Hits do not list again.
        d.address(&SharedAddress::parse("192.0.2.10", None).unwrap())
            .await
            .unwrap();
        assert_eq!(fake.list_calls(), calls);
    }

    #[tokio::test]
    async fn miss_refreshes_at_most_once_per_interval() {
        let fake = FakeLinode::with_linodes(&[1]);
        let d = Directory::new(
            fake.clone(),
            DirectoryConfig {
                ttl: Duration::from_secs(60),
                min_refresh: Duration::from_secs(60),
            },
        );
        let x = SharedAddress::parse("192.0.2.99", None).unwrap();
        assert!(d.address(&x).await.unwrap().is_none());
        assert!(d.address(&x).await.unwrap().is_none());
        assert_eq!(fake.list_calls(), 1);
        let snap = d.linodes(&[1]).await.unwrap();
        assert_eq!(snap.region_of(1).as_deref(), Some("us-east"));
        fake.add_linode(2, "eu-west");
        // Missing Linode within min_refresh: not refreshed yet.
        assert!(d.linodes(&[2]).await.unwrap().region_of(2).is_none());
    }
}
