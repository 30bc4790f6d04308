//! An in-memory [`LinodeApi`] for unit tests: share semantics of the real API (the call sets the
//! whole list; unknown Linode → 404), with switches to make calls fail.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::linode_api::{AddressInfo, ApiError, ApiErrorKind, ApiResult, LinodeApi, LinodeInfo};

#[derive(Default)]
struct Inner {
    linodes: BTreeMap<u64, LinodeInfo>,
    addresses: Vec<AddressInfo>,
    shared: BTreeMap<u64, BTreeSet<IpAddr>>,
    failing_share: HashSet<u64>,
    share_calls: Vec<u64>,
    list_calls: usize,
}

#[derive(Default)]
pub struct FakeLinode {
    inner: Mutex<Inner>,
}

impl FakeLinode {
    pub fn with_linodes(ids: &[u64]) -> Arc<Self> {
        let f = Self::default();
        {
            let mut i = f.inner.lock().unwrap();
            for id in ids {
                i.linodes.insert(
                    *id,
                    LinodeInfo {
                        id: *id,
                        label: format!("linode-{id}"),
                        region: "us-east".into(),
                    },
                );
            }
        }
        Arc::new(f)
    }

    pub fn add_linode(&self, id: u64, region: &str) {
        self.inner.lock().unwrap().linodes.insert(
            id,
            LinodeInfo {
                id,
                label: format!("linode-{id}"),
                region: region.into(),
            },
        );
    }

    /// Deletes the Linode (its shares go with it, as at Linode).
    pub fn remove_linode(&self, id: u64) {
        let mut i = self.inner.lock().unwrap();
        i.linodes.remove(&id);
        i.shared.remove(&id);
    }

    pub fn add_address(&self, network: &str, prefix: u8, region: &str, owner: Option<u64>) {
        self.inner.lock().unwrap().addresses.push(AddressInfo {
            network: network.parse().unwrap(),
            prefix,
            region: region.into(),
            owner,
        });
    }

    pub fn set_shared(&self, linode: u64, ips: &[&str]) {
        self.inner
            .lock()
            .unwrap()
            .shared
            .insert(linode, ips.iter().map(|s| s.parse().unwrap()).collect());
    }

    pub fn shared(&self, linode: u64) -> Vec<IpAddr> {
        self.inner
            .lock()
            .unwrap()
            .shared
            .get(&linode)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn fail_share(&self, linode: u64, fail: bool) {
        let mut i = self.inner.lock().unwrap();
        if fail {
            i.failing_share.insert(linode);
        } else {
            i.failing_share.remove(&linode);
        }
    }

    /// Linodes of every successful share call so far, sorted.
    pub fn share_calls(&self) -> Vec<u64> {
        let mut v = self.inner.lock().unwrap().share_calls.clone();
        v.sort();
        v
    }

    pub fn list_calls(&self) -> usize {
        self.inner.lock().unwrap().list_calls
    }
}

fn not_found(linode: u64) -> ApiError {
    ApiError::new(
        ApiErrorKind::NotFound,
        format!("Linode {linode}: Not found"),
    )
}

impl LinodeApi for FakeLinode {
    fn list_linodes(&self) -> BoxFuture<'_, ApiResult<Vec<LinodeInfo>>> {
        let mut i = self.inner.lock().unwrap();
        i.list_calls += 1;
        let v = i.linodes.values().cloned().collect();
        async move { Ok(v) }.boxed()
    }

    fn list_addresses(&self) -> BoxFuture<'_, ApiResult<Vec<AddressInfo>>> {
        let mut i = self.inner.lock().unwrap();
        i.list_calls += 1;
        let v = i.addresses.clone();
        async move { Ok(v) }.boxed()
    }

    fn shared_addresses(&self, linode: u64) -> BoxFuture<'_, ApiResult<BTreeSet<IpAddr>>> {
        let i = self.inner.lock().unwrap();
        let r = if i.linodes.contains_key(&linode) {
            Ok(i.shared.get(&linode).cloned().unwrap_or_default())
        } else {
            Err(not_found(linode))
        };
        async move { r }.boxed()
    }

    fn share(&self, linode: u64, ips: Vec<IpAddr>) -> BoxFuture<'_, ApiResult<()>> {
        let mut i = self.inner.lock().unwrap();
        let r = if !i.linodes.contains_key(&linode) {
            Err(not_found(linode))
        } else if i.failing_share.contains(&linode) {
            Err(ApiError::new(
                ApiErrorKind::Transient,
                "POST /networking/ips/share: 500 Internal Server Error",
            ))
        } else {
            i.shared.insert(linode, ips.into_iter().collect());
            i.share_calls.push(linode);
            Ok(())
        };
        async move { r }.boxed()
    }
}
