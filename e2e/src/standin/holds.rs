//! Held responses: an operation that creates something at Linode commits its change and
//! then holds its answer until a test releases it, or until the client goes away (the
//! connection drops and the handler is dropped with it). This is the window in which a
//! client that crashes never learns that its call took effect.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

/// The operations whose answer can be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOperation {
    /// `POST /linode/instances`.
    LinodeCreate,
    /// `POST /linode/instances/{linodeId}/ips` and `POST /networking/ips`.
    Ipv4Allocate,
    /// `POST /networking/ipv6/ranges`.
    RangeCreate,
}

/// Where a held answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldState {
    /// Committed, answer not sent yet.
    Waiting,
    /// Released: the answer was sent on.
    Released,
    /// The client went away while the answer was held; it never got it.
    Dropped,
}

/// One held answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldResponse {
    /// Handed out in order, from 1.
    pub id: u64,
    /// The operation.
    pub operation: HeldOperation,
    /// Where it is.
    pub state: HeldState,
}

/// What is armed and what is (or was) held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldsView {
    /// Per operation, how many of the next successful calls get held.
    pub armed: BTreeMap<HeldOperation, u32>,
    /// Every held answer since the last clear, oldest first.
    pub held: Vec<HeldResponse>,
}

#[derive(Debug, Default)]
struct Inner {
    view: HoldsView,
    release: BTreeMap<u64, oneshot::Sender<()>>,
}

/// The hold knob and its register.
#[derive(Debug)]
pub struct Holds {
    inner: Mutex<Inner>,
    /// Bumped on every change, so tests can wait for a held answer.
    changed: watch::Sender<u64>,
}

impl Default for Holds {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }
}

/// Marks its held answer `Dropped` unless it was released first.
struct DropGuard<'a> {
    holds: &'a Holds,
    id: u64,
}

impl Drop for DropGuard<'_> {
    fn drop(&mut self) {
        self.holds.settle(self.id, HeldState::Dropped);
    }
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        sharedip_process::sync::lock(&self.inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Holds the answer of the next `count` successful calls of `operation`.
    pub fn arm(&self, operation: HeldOperation, count: u32) {
        let mut g = self.lock();
        if count == 0 {
            g.view.armed.remove(&operation);
        } else {
            g.view.armed.insert(operation, count);
        }
        drop(g);
        self.bump();
    }

    /// Releases one waiting answer (`Some(id)`) or all of them; returns how many.
    pub fn release(&self, id: Option<u64>) -> usize {
        let senders: Vec<oneshot::Sender<()>> = {
            let mut g = self.lock();
            let ids: Vec<u64> = g
                .release
                .keys()
                .copied()
                .filter(|k| id.is_none_or(|i| i == *k))
                .collect();
            ids.iter().filter_map(|k| g.release.remove(k)).collect()
        };
        let n = senders.len();
        for s in senders {
            // A receiver already gone was dropped with its client; its guard records that.
            let _ = s.send(());
        }
        n
    }

    /// Disarms everything and releases every waiting answer (nothing stays stuck).
    pub fn clear(&self) {
        self.release(None);
        self.lock().view = HoldsView::default();
        self.bump();
    }

    /// What is armed and held.
    pub fn view(&self) -> HoldsView {
        self.lock().view.clone()
    }

    /// The answers waiting now.
    pub fn waiting(&self) -> Vec<HeldResponse> {
        self.view()
            .held
            .into_iter()
            .filter(|h| h.state == HeldState::Waiting)
            .collect()
    }

    /// Waits (at most `timeout`) until `pred` holds for the view; returns the view then,
    /// or `None` on timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&HoldsView) -> bool,
    ) -> Option<HoldsView> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                let v = self.view();
                if pred(&v) {
                    return v;
                }
                if rx.changed().await.is_err() {
                    // Never happens while `self` lives; answer with what there is.
                    return self.view();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    fn settle(&self, id: u64, state: HeldState) {
        let mut g = self.lock();
        g.release.remove(&id);
        if let Some(h) = g
            .view
            .held
            .iter_mut()
            .find(|h| h.id == id && h.state == HeldState::Waiting)
        {
            h.state = state;
            tracing::info!(id, operation = ?h.operation, ?state, "held answer settled");
        }
        drop(g);
        self.bump();
    }

    /// Called by a handler after its change is committed: if `operation` is armed, waits
    /// until the answer is released. Dropping the returned future (the client went away)
    /// records the answer as dropped.
    pub(crate) async fn hold(&self, operation: HeldOperation) {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut g = self.lock();
            match g.view.armed.get_mut(&operation) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return,
            }
            g.view.armed.retain(|_, n| *n > 0);
            let id = g.view.held.last().map_or(1, |h| h.id + 1);
            g.view.held.push(HeldResponse {
                id,
                operation,
                state: HeldState::Waiting,
            });
            g.release.insert(id, tx);
            id
        };
        tracing::info!(id, ?operation, "answer held after commit");
        self.bump();
        let guard = DropGuard { holds: self, id };
        // A dropped sender (cleared) lets the answer go too.
        let _ = rx.await;
        std::mem::forget(guard);
        self.settle(id, HeldState::Released);
    }
}
