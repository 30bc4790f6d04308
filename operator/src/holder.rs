//! The IP holder: one unbooted Linode per region and cluster that owns the addresses the
//! operator allocates, so they outlive every node of the cluster (LKE recycles nodes on each
//! upgrade, and an address assigned to a node is deleted with it).
//!
//! The holder is found by its label, `sharedip-holder-<region>-<cluster id>`: Linode keeps
//! labels unique per account, and tags (the other handle) need an unrestricted user. Another
//! cluster of the account has another identity, so another label: neither finds the other's
//! holder. A label Linode would refuse (too long, `--` from the cluster id) is shortened to
//! `sharedip-holder-<region>-<hash of the cluster id>`.
//!
//! Optionally the retired Linode CCM's holders (`linode-ccm-ip-holder-<region>[-<suffix>]`)
//! are adopted with their addresses, and an existing Linode can be named as a region's holder.
//! The operator never deletes a holder, and never hands out or deletes the holder's own IPv4
//! address (Linode refuses to delete a Linode's last public IPv4 anyway).
//!
//! Everything that creates or allocates in a region runs under that region's lock
//! ([`Holders::region`]): two allocations never race for "the one new address on the holder",
//! which is what makes crash recovery exact (see [`crate::allocation`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use sharedip_process::sync::lock;
use tokio::sync::OwnedMutexGuard;
use tracing::info;

use crate::cluster_id::ClusterId;
use crate::linode_api::{ApiError, ApiErrorKind, DynLifecycleApi, LinodeInfo};

/// Prefix of the holders this operator creates.
pub const LABEL_PREFIX: &str = "sharedip-holder-";
/// Prefix of the holders the Linode CCM created before it dropped its shared-IP mode.
pub const CCM_LABEL_PREFIX: &str = "linode-ccm-ip-holder-";
/// Longest Linode label.
const MAX_LABEL: usize = 64;

/// How the operator gets a region's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderMode {
    /// Find the holder by label, or create it.
    Auto,
    /// Never create one: only named holders and adopted CCM holders serve.
    Off,
}

/// The holder settings (flags `--ip-holder`, `--ip-holder-linode`, `--adopt-ccm-holders`).
#[derive(Debug, Clone)]
pub struct HolderSettings {
    pub mode: HolderMode,
    /// Existing Linodes named as the holder of their region.
    pub named: Vec<u64>,
    /// Adopt the CCM's holder of a region (label `linode-ccm-ip-holder-<region>`, or with
    /// `-<suffix>` when a suffix is given) when this cluster has none of its own.
    pub adopt_ccm: Option<String>,
    /// First and largest wait after Linode refused to create or allocate in a region.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Experimental: IPv4 addresses are Reserved IPs assigned to the holder
    /// (`--experimental-reserved-ips`, see [`crate::reserved`]).
    pub reserved_ips: bool,
}

impl Default for HolderSettings {
    fn default() -> Self {
        Self {
            mode: HolderMode::Auto,
            named: Vec::new(),
            adopt_ccm: None,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            reserved_ips: false,
        }
    }
}

/// A region's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub id: u64,
    pub label: String,
    pub region: String,
    /// How it became the holder, for messages.
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Found,
    Created,
    Named,
    AdoptedFromCcm,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Found => "found by label",
            Origin::Created => "created",
            Origin::Named => "named by --ip-holder-linode",
            Origin::AdoptedFromCcm => "adopted from the Linode CCM",
        }
    }
}

/// Why a region has no holder to allocate on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HolderError {
    #[error("this operator runs with --ip-holder=off and no holder is named for region {region} (--ip-holder-linode); give the SharedIP an address in spec.address")]
    Disabled { region: String },
    #[error("the operator has no Linode API access for allocations")]
    NoApi,
    #[error("Linode refused to create the IP holder {label} in region {region}: {source}")]
    CreateRefused {
        label: String,
        region: String,
        #[source]
        source: ApiError,
    },
    #[error("Linode API error while looking for the IP holder of region {region}: {source}")]
    Api {
        region: String,
        #[source]
        source: ApiError,
    },
}

impl HolderError {
    /// Whether the failure is Linode's refusal (worth a long, growing wait) rather than a
    /// passing error.
    pub fn is_refusal(&self) -> bool {
        match self {
            HolderError::CreateRefused { source, .. } => !source.may_have_taken_effect,
            HolderError::Disabled { .. } | HolderError::NoApi => true,
            HolderError::Api { .. } => false,
        }
    }
}

/// The label of this cluster's holder in `region`.
pub fn holder_label(region: &str, cluster: &ClusterId) -> String {
    let full = format!("{LABEL_PREFIX}{region}-{cluster}");
    if is_valid_label(&full) {
        return full;
    }
    format!("{LABEL_PREFIX}{region}-{:016x}", fnv1a(cluster.as_str()))
}

/// The labels of the CCM's holder in `region`: with the suffix when one is given.
pub fn ccm_label(region: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("{CCM_LABEL_PREFIX}{region}")
    } else {
        format!("{CCM_LABEL_PREFIX}{region}-{suffix}")
    }
}

/// Linode's label rule: 3-64 characters, a letter first, then letters, digits, `-`, `_`, `.`,
/// never two of `-`, `_` or `.` in a row (the spec's pattern; the last character must be
/// alphanumeric too).
pub fn is_valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    (3..=MAX_LABEL).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(allowed)
        && !label.contains("--")
        && !label.contains("__")
        && !label.contains("..")
}

/// 64-bit FNV-1a: a stable, documented hash for shortened labels (not for security).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the operator knows about one region: its holder, and the wait after a refusal.
#[derive(Debug, Default)]
pub struct RegionState {
    pub holder: Option<Holder>,
    failures: u32,
    retry_at: Option<Instant>,
    /// The refusal that started the wait, repeated word for word while it lasts.
    last_refusal: Option<LastRefusal>,
}

/// Linode's last refusal in a region, as SharedIPs report it while the wait lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRefusal {
    /// The condition reason (what was refused: the holder or the address).
    pub reason: &'static str,
    /// Linode's refusal and when it is asked again, as a time of day rather than a countdown:
    /// a message that changed at every reconcile would rewrite the status and repeat the
    /// Warning Event each time the SharedIP is touched.
    pub message: String,
}

impl RegionState {
    /// While Linode's last refusal in this region is being waited out: how long still, and
    /// the refusal.
    pub fn backing_off(&self, now: Instant) -> Option<(Duration, &LastRefusal)> {
        let wait = self
            .retry_at
            .and_then(|at| at.checked_duration_since(now))
            .filter(|d| !d.is_zero())?;
        Some((wait, self.last_refusal.as_ref()?))
    }

    /// Linode refused: wait twice as long as last time before asking again. Returns the wait
    /// and the refusal as reported until it ends.
    pub fn refused(
        &mut self,
        settings: &HolderSettings,
        reason: &'static str,
        why: &str,
        now: Instant,
    ) -> (Duration, LastRefusal) {
        self.failures = self.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(self.failures.saturating_sub(1).min(16));
        let wait = settings
            .backoff_base
            .saturating_mul(factor)
            .min(settings.backoff_max);
        self.retry_at = Some(now + wait);
        let refusal = LastRefusal {
            reason,
            message: format!("{why}; next attempt after {}", wall_clock_after(wait)),
        };
        self.last_refusal = Some(refusal.clone());
        (wait, refusal)
    }

    /// Linode did what was asked: the next refusal waits the base time again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.last_refusal = None;
    }
}

/// The time of day `wait` from now, to the second (rounded up).
fn wall_clock_after(wait: Duration) -> String {
    let secs = i64::try_from(wait.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(i64::from(wait.subsec_nanos() > 0));
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now.saturating_add(secs))
        .map_or_else(|_| format!("{}s", wait.as_secs()), |t| t.to_string())
}

/// The holders of every region, each region behind its own lock.
pub struct Holders {
    api: Option<DynLifecycleApi>,
    cluster: ClusterId,
    pub settings: HolderSettings,
    regions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<RegionState>>>>,
}

impl Holders {
    pub fn new(api: Option<DynLifecycleApi>, cluster: ClusterId, settings: HolderSettings) -> Self {
        Self {
            api,
            cluster,
            settings,
            regions: Mutex::new(HashMap::new()),
        }
    }

    pub fn api(&self) -> Result<&DynLifecycleApi, HolderError> {
        self.api.as_ref().ok_or(HolderError::NoApi)
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// Takes `region`'s lock: held across everything that creates or allocates there.
    pub async fn region(&self, region: &str) -> OwnedMutexGuard<RegionState> {
        let slot = lock(&self.regions)
            .entry(region.to_string())
            .or_default()
            .clone();
        slot.lock_owned().await
    }

    /// The region's holder: the cached one, a named one, ours by label, the CCM's (when
    /// adopting), or — with `create` and `--ip-holder=auto` — a new one.
    pub async fn holder(
        &self,
        state: &mut RegionState,
        region: &str,
        create: bool,
    ) -> Result<Option<Holder>, HolderError> {
        if let Some(h) = &state.holder {
            return Ok(Some(h.clone()));
        }
        let found = self.find(region).await?;
        let holder = match found {
            Some(h) => Some(h),
            None if !create => None,
            None if self.settings.mode == HolderMode::Off => {
                return Err(HolderError::Disabled {
                    region: region.to_string(),
                })
            }
            None => Some(self.create(region).await?),
        };
        if let Some(h) = &holder {
            info!(region, holder = h.id, label = %h.label, origin = h.origin.as_str(), "IP holder");
        }
        state.holder.clone_from(&holder);
        Ok(holder)
    }

    /// Forgets the cached holder of a region (it was deleted by hand).
    pub fn forget(state: &mut RegionState) {
        state.holder = None;
    }

    async fn find(&self, region: &str) -> Result<Option<Holder>, HolderError> {
        let api = self.api()?;
        let api_error = |source| HolderError::Api {
            region: region.to_string(),
            source,
        };
        for id in &self.settings.named {
            match api.linode(*id).await {
                Ok(l) if l.region == region => return Ok(Some(holder(l, Origin::Named))),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_error(e)),
            }
        }
        let ours = holder_label(region, &self.cluster);
        if let Some(l) = self.labelled(&ours).await.map_err(api_error)? {
            return Ok(Some(holder(l, Origin::Found)));
        }
        if let Some(suffix) = &self.settings.adopt_ccm {
            let theirs = ccm_label(region, suffix);
            if let Some(l) = self.labelled(&theirs).await.map_err(api_error)? {
                return Ok(Some(holder(l, Origin::AdoptedFromCcm)));
            }
        }
        Ok(None)
    }

    async fn labelled(&self, label: &str) -> Result<Option<LinodeInfo>, ApiError> {
        let api = self
            .api()
            .map_err(|e| ApiError::new(ApiErrorKind::Auth, e.to_string()))?;
        Ok(api.linodes_labelled(label).await?.into_iter().next())
    }

    /// Creates the holder. Safe to repeat after a lost answer: the label is unique, so a
    /// second create is refused and the next [`Holders::find`] finds the first.
    async fn create(&self, region: &str) -> Result<Holder, HolderError> {
        let api = self.api()?;
        let label = holder_label(region, &self.cluster);
        let refused = |source| HolderError::CreateRefused {
            label: label.clone(),
            region: region.to_string(),
            source,
        };
        let nanode = api.nanode_type().await.map_err(refused)?;
        match api.create_holder(region, &nanode, &label).await {
            Ok(l) => {
                info!(region, holder = l.id, label = %l.label, linode_type = %nanode, "created the IP holder Linode (unbooted)");
                Ok(holder(l, Origin::Created))
            }
            Err(e) if e.may_have_taken_effect => match self.labelled(&label).await {
                Ok(Some(l)) => Ok(holder(l, Origin::Created)),
                _ => Err(refused(e)),
            },
            Err(e) => Err(refused(e)),
        }
    }

    /// Whether `linode` is this cluster's holder for `region` (by id, label or name): the
    /// only Linode whose addresses the operator ever deletes.
    pub async fn is_ours(&self, linode: u64, region: &str) -> Result<bool, ApiError> {
        if self.settings.named.contains(&linode) {
            return Ok(true);
        }
        let api = self
            .api()
            .map_err(|e| ApiError::new(ApiErrorKind::Auth, e.to_string()))?;
        let l = match api.linode(linode).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        if l.region != region {
            return Ok(false);
        }
        let ccm = self
            .settings
            .adopt_ccm
            .as_ref()
            .is_some_and(|s| l.label == ccm_label(region, s));
        Ok(l.label == holder_label(region, &self.cluster) || ccm)
    }
}

fn holder(l: LinodeInfo, origin: Origin) -> Holder {
    Holder {
        id: l.id,
        label: l.label,
        region: l.region,
        origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_region_and_cluster_and_stay_valid() {
        let uid = ClusterId::new("0b2c8d4e-5f60-4a1b-9c3d-7e8f9a0b1c2d").unwrap();
        let l = holder_label("us-east", &uid);
        assert_eq!(
            l,
            "sharedip-holder-us-east-0b2c8d4e-5f60-4a1b-9c3d-7e8f9a0b1c2d"
        );
        assert!(is_valid_label(&l));
        // 65 characters: shortened with a hash, stable and distinct per cluster.
        let long = holder_label("us-southeast", &uid);
        assert!(long.starts_with("sharedip-holder-us-southeast-"), "{long}");
        assert!(is_valid_label(&long) && long.len() <= 64, "{long}");
        assert_eq!(long, holder_label("us-southeast", &uid));
        let other = ClusterId::new("0b2c8d4e-5f60-4a1b-9c3d-7e8f9a0b1c2e").unwrap();
        assert_ne!(long, holder_label("us-southeast", &other));
        // Linode forbids "--" in labels; a cluster id may have it.
        let dashes = holder_label("us-east", &ClusterId::new("prod--a").unwrap());
        assert!(is_valid_label(&dashes), "{dashes}");
        assert_ne!(
            holder_label("us-east", &ClusterId::new("prod-a").unwrap()),
            holder_label("eu-west", &ClusterId::new("prod-a").unwrap())
        );
    }

    #[test]
    fn label_rule_matches_linodes() {
        for ok in ["abc", "sharedip-holder-us-east-x1", "a_b.c-d"] {
            assert!(is_valid_label(ok), "{ok}");
        }
        for bad in [
            "ab",
            "1abc",
            "a--b",
            "a__b",
            "a..b",
            "abc-",
            &"a".repeat(65),
            "a b",
        ] {
            assert!(!is_valid_label(bad), "{bad}");
        }
    }

    #[test]
    fn ccm_labels() {
        assert_eq!(ccm_label("us-east", ""), "linode-ccm-ip-holder-us-east");
        assert_eq!(
            ccm_label("us-east", "prod"),
            "linode-ccm-ip-holder-us-east-prod"
        );
    }

    #[test]
    fn refusals_back_off_exponentially_and_reset() {
        let s = HolderSettings::default();
        let mut r = RegionState::default();
        let t0 = Instant::now();
        let refuse = |r: &mut RegionState| r.refused(&s, "AllocationRefused", "no", t0).0;
        assert_eq!(refuse(&mut r), Duration::from_secs(30));
        assert_eq!(refuse(&mut r), Duration::from_secs(60));
        assert!(r.backing_off(t0 + Duration::from_secs(59)).is_some());
        assert!(r.backing_off(t0 + Duration::from_secs(60)).is_none());
        for _ in 0..20 {
            refuse(&mut r);
        }
        assert_eq!(
            r.backing_off(t0).map(|(d, _)| d),
            Some(Duration::from_secs(3600))
        );
        r.succeeded();
        assert!(r.backing_off(t0).is_none());
        assert_eq!(refuse(&mut r), Duration::from_secs(30));
    }

    #[test]
    fn a_refusal_reads_the_same_for_as_long_as_it_lasts() {
        let s = HolderSettings::default();
        let mut r = RegionState::default();
        let t0 = Instant::now();
        let (_, first) = r.refused(&s, "IPHolderCreationRefused", "Linode said no", t0);
        assert_eq!(first.reason, "IPHolderCreationRefused");
        assert!(
            first
                .message
                .starts_with("Linode said no; next attempt after "),
            "{}",
            first.message
        );
        for later in [1, 10, 29] {
            let (_, now) = r.backing_off(t0 + Duration::from_secs(later)).unwrap();
            assert_eq!(now, &first, "{later}s later");
        }
    }
}
