//! The ledger: which Linodes received which of this cluster's addresses.
//!
//! Linode does not record who shared an address with a Linode, and a Node, its `providerID` and
//! a SharedIP's status all vanish when the Node or the SharedIP is deleted. The ledger is the
//! durable part: a ConfigMap in the operator's namespace, named after the
//! [cluster identity](crate::cluster_id) and carrying it, with one key per Linode listing the
//! addresses the operator shared with it.
//!
//! It is written ahead: the share syncer records a Linode's addresses *before* the share call
//! that adds them, so a crash in between leaves at worst an entry for a share that never
//! happened (harmless: the sweep finds the address absent and drops the entry). An entry is
//! dropped once the address is seen absent from the Linode, or the Linode is gone. The
//! [sweep](crate::sweep) uses it to find shares no SharedIP wants any more; `uninstall` uses it
//! to unshare everything of this cluster and nothing else.
//!
//! Keys other than the ones this module writes are left alone, so later features can keep
//! their own records in the same object. A ConfigMap holds at most 1 MiB: about 50,000
//! (Linode, address) pairs; a write beyond that fails, and with it the share it was to record.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tracing::debug;

use crate::cluster_id::ClusterId;

/// Linode → the addresses of this cluster shared with it.
pub type Entries = BTreeMap<u64, BTreeSet<IpAddr>>;

/// Per Linode, its new address set; `None` removes its entry.
pub type Changes = BTreeMap<u64, Option<BTreeSet<IpAddr>>>;

/// Data key holding the cluster identity.
pub const CLUSTER_ID_KEY: &str = "cluster-id";
/// Prefix of the per-Linode data keys (`linode.<id>`).
pub const LINODE_KEY_PREFIX: &str = "linode.";
/// Label carrying the cluster identity, to find ledgers with a selector.
pub const CLUSTER_ID_LABEL: &str = "sharedip.io/cluster-id";
/// How many times a write is retried after someone else wrote in between.
const MAX_ATTEMPTS: usize = 5;

/// The ledger ConfigMap's name for `cluster`.
pub fn configmap_name(cluster: &ClusterId) -> String {
    format!("sharedip-ledger-{cluster}")
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger ConfigMap {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ledger ConfigMap {name} records cluster {found:?}, not this cluster ({ours}); it was \
         copied or restored from another cluster: the operator does not act on another \
         cluster's shares (delete it, or run with that cluster's --cluster-id)"
    )]
    Foreign {
        name: String,
        found: String,
        ours: String,
    },
    #[error("ledger ConfigMap {name}, key {key:?}: {message}; fix or delete that key")]
    Corrupt {
        name: String,
        key: String,
        message: String,
    },
    #[error("ledger ConfigMap {name} was changed by someone else on each of {MAX_ATTEMPTS} attempts to write it")]
    Contended { name: String },
    #[error("ledger {name}: {message}")]
    Store { name: String, message: String },
}

/// A write that did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The stored version is no longer the one read: read again and retry.
    Conflict,
    Failed(LedgerError),
}

/// What a store holds: the entries and an opaque version for optimistic concurrency (`None`:
/// nothing stored yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub entries: Entries,
    pub version: Option<String>,
}

/// Where the ledger lives: a ConfigMap in production, memory in unit tests.
pub trait LedgerStore: Send + Sync + 'static {
    /// `namespace/name`, for messages.
    fn name(&self) -> String;
    fn read(&self) -> BoxFuture<'_, Result<Stored, LedgerError>>;
    /// Applies `changes` if the stored version is still `version`; `all` is the whole ledger
    /// after the change (what a store that does not exist yet is created with). Returns the new
    /// version.
    fn write<'a>(
        &'a self,
        version: Option<&'a str>,
        changes: &'a Changes,
        all: &'a Entries,
    ) -> BoxFuture<'a, Result<String, WriteError>>;
}

/// The ledger ConfigMap of one cluster.
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    cluster: ClusterId,
}

impl ConfigMapStore {
    pub fn new(client: kube::Client, namespace: &str, cluster: &ClusterId) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: configmap_name(cluster),
            cluster: cluster.clone(),
        }
    }

    fn kube_err(&self, source: kube::Error) -> LedgerError {
        LedgerError::Kube {
            name: self.name(),
            source,
        }
    }

    fn parse(&self, cm: &ConfigMap) -> Result<Entries, LedgerError> {
        let empty = BTreeMap::new();
        let data = cm.data.as_ref().unwrap_or(&empty);
        let found = data.get(CLUSTER_ID_KEY).map(String::as_str).unwrap_or("");
        if found != self.cluster.as_str() {
            return Err(LedgerError::Foreign {
                name: self.name(),
                found: found.to_string(),
                ours: self.cluster.to_string(),
            });
        }
        parse_entries(data).map_err(|(key, message)| LedgerError::Corrupt {
            name: self.name(),
            key,
            message,
        })
    }

    /// A failed write: someone else wrote in between, or a real failure.
    fn write_error(&self, e: kube::Error) -> WriteError {
        match e {
            // 409: changed (patch) or created (create) by someone else since we read it.
            kube::Error::Api(s) if s.code == 409 => WriteError::Conflict,
            // 404 on patch: deleted since we read it; create it again.
            kube::Error::Api(s) if s.code == 404 => WriteError::Conflict,
            e => WriteError::Failed(self.kube_err(e)),
        }
    }

    /// Creates the ConfigMap, holding `all`.
    async fn create(&self, all: &Entries) -> Result<ConfigMap, WriteError> {
        let mut data: BTreeMap<String, String> = all
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(l, a)| (key(*l), value(a)))
            .collect();
        data.insert(CLUSTER_ID_KEY.into(), self.cluster.to_string());
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    CLUSTER_ID_LABEL: self.cluster.as_str(),
                    "app.kubernetes.io/part-of": "sharedip",
                    "app.kubernetes.io/managed-by": "sharedip-operator",
                },
                "annotations": {
                    "sharedip.io/description": "Linodes that received this cluster's shared addresses (linode.<id>: addresses). Written by the sharedip operator before each share; read by its sweep and by uninstall. Deleting it makes the operator forget shares it would otherwise clean up.",
                },
            },
            "data": data,
        }))
        .map_err(|e| {
            WriteError::Failed(LedgerError::Store {
                name: self.name(),
                message: e.to_string(),
            })
        })?;
        self.api
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| self.write_error(e))
    }

    /// Applies `changes` to the ConfigMap if it is still at `version`.
    async fn patch(&self, version: &str, changes: &Changes) -> Result<ConfigMap, WriteError> {
        let data: serde_json::Map<String, serde_json::Value> = changes
            .iter()
            .map(|(l, a)| {
                let v = match a {
                    Some(a) if !a.is_empty() => json!(value(a)),
                    _ => serde_json::Value::Null,
                };
                (key(*l), v)
            })
            .collect();
        // The resourceVersion makes the patch conditional: a concurrent writer turns it into a
        // 409 instead of a lost update.
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "data": data,
        });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.write_error(e))
    }
}

/// The per-Linode keys of a ConfigMap's data; other keys are ignored.
fn parse_entries(data: &BTreeMap<String, String>) -> Result<Entries, (String, String)> {
    let mut out = Entries::new();
    for (key, value) in data {
        let Some(id) = key.strip_prefix(LINODE_KEY_PREFIX) else {
            continue;
        };
        let id: u64 = id
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| (key.clone(), format!("{id:?} is not a Linode id")))?;
        let mut addrs = BTreeSet::new();
        for a in value.split_whitespace() {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| (key.clone(), format!("{a:?} is not an IP address")))?;
            addrs.insert(ip);
        }
        if !addrs.is_empty() {
            out.insert(id, addrs);
        }
    }
    Ok(out)
}

fn key(linode: u64) -> String {
    format!("{LINODE_KEY_PREFIX}{linode}")
}

fn value(addrs: &BTreeSet<IpAddr>) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

impl LedgerStore for ConfigMapStore {
    fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn read(&self) -> BoxFuture<'_, Result<Stored, LedgerError>> {
        Box::pin(async move {
            match self.api.get_opt(&self.name).await {
                Ok(None) => Ok(Stored::default()),
                Ok(Some(cm)) => Ok(Stored {
                    entries: self.parse(&cm)?,
                    version: cm.metadata.resource_version.clone(),
                }),
                Err(e) => Err(self.kube_err(e)),
            }
        })
    }

    fn write<'a>(
        &'a self,
        version: Option<&'a str>,
        changes: &'a Changes,
        all: &'a Entries,
    ) -> BoxFuture<'a, Result<String, WriteError>> {
        Box::pin(async move {
            let written = match version {
                None => self.create(all).await,
                Some(v) => self.patch(v, changes).await,
            };
            written.map(|cm| cm.metadata.resource_version.unwrap_or_default())
        })
    }
}

/// The ledger as last read or written, and the store's version of it.
struct Cached {
    entries: Entries,
    version: Option<String>,
}

/// The ledger of this cluster: a cached copy of the store, written through.
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    state: tokio::sync::Mutex<Cached>,
    pairs: Option<Gauge>,
}

fn count(entries: &Entries) -> i64 {
    entries
        .values()
        .map(|a| i64::try_from(a.len()).unwrap_or(i64::MAX))
        .sum()
}

impl Ledger {
    /// Reads the ledger. `pairs` (optional) is kept at the number of (Linode, address) pairs.
    pub async fn open(
        store: Arc<dyn LedgerStore>,
        pairs: Option<Gauge>,
    ) -> Result<Self, LedgerError> {
        let stored = store.read().await?;
        if let Some(g) = &pairs {
            g.set(count(&stored.entries));
        }
        Ok(Self {
            store,
            state: tokio::sync::Mutex::new(Cached {
                entries: stored.entries,
                version: stored.version,
            }),
            pairs,
        })
    }

    /// `namespace/name` of the store.
    pub fn name(&self) -> String {
        self.store.name()
    }

    /// A copy of every entry.
    pub async fn entries(&self) -> Entries {
        self.state.lock().await.entries.clone()
    }

    /// Reads the store again (another process may have written it).
    pub async fn reload(&self) -> Result<(), LedgerError> {
        let stored = self.store.read().await?;
        let mut st = self.state.lock().await;
        st.entries = stored.entries;
        st.version = stored.version;
        self.set_gauge(&st.entries);
        Ok(())
    }

    fn set_gauge(&self, entries: &Entries) {
        if let Some(g) = &self.pairs {
            g.set(count(entries));
        }
    }

    /// The pairs of `wanted` not recorded yet.
    pub async fn missing(&self, wanted: &Entries) -> Entries {
        let st = self.state.lock().await;
        let mut out = Entries::new();
        for (l, addrs) in wanted {
            let known = st.entries.get(l);
            let new: BTreeSet<IpAddr> = addrs
                .iter()
                .filter(|a| !known.is_some_and(|k| k.contains(a)))
                .copied()
                .collect();
            if !new.is_empty() {
                out.insert(*l, new);
            }
        }
        out
    }

    /// The recorded pairs that `lists` shows are not (or no longer) shared: per Linode its
    /// current shared list, `None` when the Linode no longer exists.
    pub async fn absent(&self, lists: &BTreeMap<u64, Option<BTreeSet<IpAddr>>>) -> Entries {
        let st = self.state.lock().await;
        let mut out = Entries::new();
        for (l, list) in lists {
            let Some(recorded) = st.entries.get(l) else {
                continue;
            };
            let gone: BTreeSet<IpAddr> = match list {
                None => recorded.clone(),
                Some(list) => recorded.difference(list).copied().collect(),
            };
            if !gone.is_empty() {
                out.insert(*l, gone);
            }
        }
        out
    }

    /// Records `add` and forgets `remove` in one write (nothing is written when both change
    /// nothing). On error nothing changed.
    pub async fn update(&self, add: &Entries, remove: &Entries) -> Result<(), LedgerError> {
        let mut st = self.state.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let next = apply(&st.entries, add, remove);
            let changes = diff(&st.entries, &next);
            if changes.is_empty() {
                return Ok(());
            }
            match self
                .store
                .write(st.version.as_deref(), &changes, &next)
                .await
            {
                Ok(v) => {
                    debug!(ledger = %self.store.name(), linodes = changes.len(), "ledger written");
                    st.entries = next;
                    st.version = Some(v);
                    self.set_gauge(&st.entries);
                    return Ok(());
                }
                Err(WriteError::Conflict) => {
                    debug!(ledger = %self.store.name(), "ledger changed since read; reading it again");
                    let stored = self.store.read().await?;
                    st.entries = stored.entries;
                    st.version = stored.version;
                }
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
        Err(LedgerError::Contended {
            name: self.store.name(),
        })
    }
}

fn apply(entries: &Entries, add: &Entries, remove: &Entries) -> Entries {
    let mut next = entries.clone();
    for (l, addrs) in add {
        next.entry(*l).or_default().extend(addrs.iter().copied());
    }
    for (l, addrs) in remove {
        if let Some(set) = next.get_mut(l) {
            for a in addrs {
                set.remove(a);
            }
            if set.is_empty() {
                next.remove(l);
            }
        }
    }
    next
}

fn diff(before: &Entries, after: &Entries) -> Changes {
    let mut out = Changes::new();
    for (l, a) in after {
        if before.get(l) != Some(a) {
            out.insert(*l, Some(a.clone()));
        }
    }
    for l in before.keys() {
        if !after.contains_key(l) {
            out.insert(*l, None);
        }
    }
    out
}

/// An in-memory store for unit tests: versions, injected conflicts and failures.
#[cfg(test)]
pub mod memory {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Inner {
        stored: Option<(Entries, u64)>,
        fail: bool,
        conflicts: usize,
        writes: usize,
    }

    #[derive(Default)]
    pub struct MemoryStore {
        inner: Mutex<Inner>,
    }

    impl MemoryStore {
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        pub fn with(entries: Entries) -> Arc<Self> {
            let s = Self::default();
            s.inner.lock().unwrap().stored = Some((entries, 1));
            Arc::new(s)
        }

        pub fn entries(&self) -> Entries {
            self.inner
                .lock()
                .unwrap()
                .stored
                .as_ref()
                .map(|(e, _)| e.clone())
                .unwrap_or_default()
        }

        /// Someone else writes the store (bumps the version).
        pub fn write_behind_our_back(&self, entries: Entries) {
            let mut i = self.inner.lock().unwrap();
            let v = i.stored.as_ref().map_or(1, |(_, v)| v + 1);
            i.stored = Some((entries, v));
        }

        pub fn fail(&self, fail: bool) {
            self.inner.lock().unwrap().fail = fail;
        }

        /// The next `n` writes find the version changed.
        pub fn conflicts(&self, n: usize) {
            self.inner.lock().unwrap().conflicts = n;
        }

        pub fn writes(&self) -> usize {
            self.inner.lock().unwrap().writes
        }
    }

    impl LedgerStore for MemoryStore {
        fn name(&self) -> String {
            "memory".into()
        }

        fn read(&self) -> BoxFuture<'_, Result<Stored, LedgerError>> {
            let i = self.inner.lock().unwrap();
            let r = Stored {
                entries: i
                    .stored
                    .as_ref()
                    .map(|(e, _)| e.clone())
                    .unwrap_or_default(),
                version: i.stored.as_ref().map(|(_, v)| v.to_string()),
            };
            Box::pin(async move { Ok(r) })
        }

        fn write<'a>(
            &'a self,
            version: Option<&'a str>,
            changes: &'a Changes,
            _all: &'a Entries,
        ) -> BoxFuture<'a, Result<String, WriteError>> {
            let mut i = self.inner.lock().unwrap();
            let r = if i.fail {
                Err(WriteError::Failed(LedgerError::Store {
                    name: "memory".into(),
                    message: "injected failure".into(),
                }))
            } else if i.conflicts > 0 {
                i.conflicts -= 1;
                let v = i.stored.as_ref().map_or(1, |(_, v)| v + 1);
                let e = i.stored.take().map(|(e, _)| e).unwrap_or_default();
                i.stored = Some((e, v));
                Err(WriteError::Conflict)
            } else if version.map(str::to_string) != i.stored.as_ref().map(|(_, v)| v.to_string()) {
                Err(WriteError::Conflict)
            } else {
                let (mut e, v) = i.stored.take().unwrap_or_default();
                for (l, a) in changes {
                    match a {
                        Some(a) => {
                            e.insert(*l, a.clone());
                        }
                        None => {
                            e.remove(l);
                        }
                    }
                }
                i.stored = Some((e, v + 1));
                i.writes += 1;
                Ok((v + 1).to_string())
            };
            Box::pin(async move { r })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entries(pairs: &[(u64, &[&str])]) -> Entries {
        pairs
            .iter()
            .map(|(l, a)| (*l, a.iter().map(|s| ip(s)).collect()))
            .collect()
    }

    #[tokio::test]
    async fn records_and_forgets_and_writes_only_changes() {
        let store = MemoryStore::new();
        let ledger = Ledger::open(store.clone(), None).await.unwrap();
        ledger
            .update(
                &entries(&[(101, &["192.0.2.10"]), (102, &["192.0.2.10"])]),
                &Entries::new(),
            )
            .await
            .unwrap();
        assert_eq!(store.writes(), 1);
        // Already recorded: no write.
        ledger
            .update(&entries(&[(101, &["192.0.2.10"])]), &Entries::new())
            .await
            .unwrap();
        assert_eq!(store.writes(), 1);
        ledger
            .update(&Entries::new(), &entries(&[(102, &["192.0.2.10"])]))
            .await
            .unwrap();
        assert_eq!(store.entries(), entries(&[(101, &["192.0.2.10"])]));
        assert_eq!(ledger.entries().await, store.entries());
    }

    #[tokio::test]
    async fn a_concurrent_write_is_merged_not_lost() {
        let store = MemoryStore::with(entries(&[(101, &["192.0.2.10"])]));
        let ledger = Ledger::open(store.clone(), None).await.unwrap();
        // Someone else (the uninstaller, a second leader for a moment) records 103.
        store.write_behind_our_back(entries(&[(101, &["192.0.2.10"]), (103, &["192.0.2.11"])]));
        ledger
            .update(&entries(&[(102, &["192.0.2.10"])]), &Entries::new())
            .await
            .unwrap();
        assert_eq!(
            store.entries(),
            entries(&[
                (101, &["192.0.2.10"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.11"])
            ])
        );
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let store = MemoryStore::new();
        let ledger = Ledger::open(store.clone(), None).await.unwrap();
        store.fail(true);
        let e = ledger
            .update(&entries(&[(101, &["192.0.2.10"])]), &Entries::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert!(ledger.entries().await.is_empty());
        store.fail(false);
        store.conflicts(MAX_ATTEMPTS);
        let e = ledger
            .update(&entries(&[(101, &["192.0.2.10"])]), &Entries::new())
            .await
            .unwrap_err();
        assert!(matches!(e, LedgerError::Contended { .. }), "{e}");
        assert!(ledger.entries().await.is_empty());
    }

    #[tokio::test]
    async fn missing_and_absent() {
        let store = MemoryStore::with(entries(&[
            (101, &["192.0.2.10", "192.0.2.11"]),
            (102, &["192.0.2.10"]),
        ]));
        let ledger = Ledger::open(store, None).await.unwrap();
        assert_eq!(
            ledger
                .missing(&entries(&[
                    (101, &["192.0.2.10", "192.0.2.12"]),
                    (103, &["192.0.2.10"])
                ]))
                .await,
            entries(&[(101, &["192.0.2.12"]), (103, &["192.0.2.10"])])
        );
        let lists: BTreeMap<u64, Option<BTreeSet<IpAddr>>> = [
            (101, Some([ip("192.0.2.10"), ip("198.51.100.7")].into())),
            (102, None),
            (104, Some(BTreeSet::new())),
        ]
        .into();
        assert_eq!(
            ledger.absent(&lists).await,
            entries(&[(101, &["192.0.2.11"]), (102, &["192.0.2.10"])])
        );
    }

    #[test]
    fn parses_its_keys_and_ignores_others() {
        let data: BTreeMap<String, String> = [
            ("cluster-id".to_string(), "c1".to_string()),
            (
                "linode.101".to_string(),
                "192.0.2.10 2001:db8:1:2::".to_string(),
            ),
            ("linode.102".to_string(), "".to_string()),
            ("holder".to_string(), "a later feature's record".to_string()),
        ]
        .into();
        assert_eq!(
            parse_entries(&data).unwrap(),
            entries(&[(101, &["192.0.2.10", "2001:db8:1:2::"])])
        );
        let bad: BTreeMap<String, String> =
            [("linode.101".to_string(), "192.0.2.x".to_string())].into();
        let (key, msg) = parse_entries(&bad).unwrap_err();
        assert_eq!(key, "linode.101");
        assert!(msg.contains("192.0.2.x"), "{msg}");
        let bad: BTreeMap<String, String> = [("linode.abc".to_string(), "".to_string())].into();
        assert!(parse_entries(&bad).is_err());
    }

    #[test]
    fn diff_sets_and_removes_keys() {
        let before = entries(&[(101, &["192.0.2.10"]), (102, &["192.0.2.10"])]);
        let after = entries(&[(101, &["192.0.2.10", "192.0.2.11"]), (103, &["192.0.2.10"])]);
        let d = diff(&before, &after);
        assert_eq!(d.len(), 3);
        assert_eq!(d[&102], None);
        assert_eq!(d[&103], Some([ip("192.0.2.10")].into()));
    }
}
