//! The binder's memory: which addresses it added, on which interface, with
//! which prefix length.
//!
//! The file survives agent restarts so that an agent restarted after a
//! SharedIP was deleted can still remove the address it added earlier, while
//! every address *not* listed here (the node's own, hand-made ones) is never
//! touched. Parsing and serialising are pure; [`load`] and [`store`] do the
//! file I/O (atomic replace: temp file, fsync, rename, fsync directory).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version written into the file; a file with another version is not trusted.
pub(crate) const STATE_VERSION: u32 = 1;

/// What the binder added, keyed by (interface, address); the value is the
/// prefix length it was added with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BoundState {
    entries: BTreeMap<(String, IpAddr), u8>,
}

impl BoundState {
    /// Prefix length we added `address` with on `interface`, if we did.
    pub(crate) fn get(&self, interface: &str, address: IpAddr) -> Option<u8> {
        self.entries.get(&(interface.to_owned(), address)).copied()
    }

    /// Records that we added `address/prefix_len` on `interface`.
    pub(crate) fn insert(&mut self, interface: &str, address: IpAddr, prefix_len: u8) {
        self.entries
            .insert((interface.to_owned(), address), prefix_len);
    }

    /// Forgets `address` on `interface`; returns whether it was recorded.
    pub(crate) fn remove(&mut self, interface: &str, address: IpAddr) -> bool {
        self.entries
            .remove(&(interface.to_owned(), address))
            .is_some()
    }

    /// The addresses recorded on `interface`.
    pub(crate) fn addresses_on(&self, interface: &str) -> BTreeSet<IpAddr> {
        self.entries
            .keys()
            .filter(|(iface, _)| iface == interface)
            .map(|(_, addr)| *addr)
            .collect()
    }

    /// Every recorded entry grouped by interface, in a stable order.
    pub(crate) fn by_interface(&self) -> BTreeMap<String, Vec<(IpAddr, u8)>> {
        let mut grouped: BTreeMap<String, Vec<(IpAddr, u8)>> = BTreeMap::new();
        for ((iface, addr), prefix_len) in &self.entries {
            grouped
                .entry(iface.clone())
                .or_default()
                .push((*addr, *prefix_len));
        }
        grouped
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The file contents for this state (pretty JSON, trailing newline).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let file = StateFileRepr {
            version: STATE_VERSION,
            entries: self
                .entries
                .iter()
                .map(|((interface, address), prefix_len)| EntryRepr {
                    interface: interface.clone(),
                    address: *address,
                    prefix_len: *prefix_len,
                })
                .collect(),
        };
        // Serialising plain strings, addresses and integers cannot fail; fall
        // back to an empty document rather than panicking if it ever did.
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
    }

    /// Parses file contents. Invalid individual entries are dropped and
    /// described in [`Parsed::dropped`]; an unreadable document is an error.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Parsed, ParseError> {
        let file: StateFileRepr = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
        if file.version != STATE_VERSION {
            return Err(ParseError::UnsupportedVersion(file.version));
        }
        let mut state = BoundState::default();
        let mut dropped = Vec::new();
        for entry in file.entries {
            match entry.validate() {
                Ok(()) => state.insert(&entry.interface, entry.address, entry.prefix_len),
                Err(reason) => dropped.push(format!(
                    "{}/{} on {:?}: {reason}",
                    entry.address, entry.prefix_len, entry.interface
                )),
            }
        }
        Ok(Parsed { state, dropped })
    }
}

/// Result of parsing a state file.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) state: BoundState,
    /// Human-readable descriptions of entries that were invalid and ignored.
    pub(crate) dropped: Vec<String>,
}

/// Why a state file's contents could not be used at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("not valid state JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unsupported state file version {0} (this agent understands version {STATE_VERSION})")]
    UnsupportedVersion(u32),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFileRepr {
    version: u32,
    #[serde(default)]
    entries: Vec<EntryRepr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRepr {
    interface: String,
    address: IpAddr,
    prefix_len: u8,
}

impl EntryRepr {
    fn validate(&self) -> Result<(), &'static str> {
        validate_interface_name(&self.interface)?;
        let max = super::host_prefix_len(self.address);
        if self.prefix_len == 0 || self.prefix_len > max {
            return Err("prefix length out of range for the address family");
        }
        Ok(())
    }
}

/// Checks a Linux interface name (IFNAMSIZ is 16 including the NUL byte).
pub(crate) fn validate_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("reserved name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// Outcome of [`load`].
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) state: BoundState,
    /// Set when the file existed but could not be used; the state is then
    /// empty and the file was moved aside to `moved_to` (if that worked).
    pub(crate) corrupt: Option<Corrupt>,
    /// Invalid entries that were ignored.
    pub(crate) dropped: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Corrupt {
    pub(crate) reason: ParseError,
    pub(crate) moved_to: Option<PathBuf>,
}

/// I/O failure on the state file (other than it not existing yet).
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading the existing file failed.
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// Creating the directory that holds the file failed.
    #[error("cannot create directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing or syncing the temporary file failed.
    #[error("cannot write temporary file {tmp}: {source}")]
    WriteTemp {
        /// The temporary file.
        tmp: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file over the state file failed.
    #[error("cannot rename {tmp} into place: {source}")]
    Rename {
        /// The temporary file.
        tmp: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path has no file name component.
    #[error("path has no file name")]
    NoFileName,
    /// The blocking task doing the file I/O did not complete.
    #[error("file I/O task failed: {0}")]
    Task(String),
}

/// Reads the state file. A missing file is an empty state; a file whose
/// contents cannot be parsed is reported in [`Loaded::corrupt`], moved aside
/// (so the evidence survives the next write) and treated as empty.
pub(crate) fn load(path: &Path) -> Result<Loaded, StateFileError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                state: BoundState::default(),
                corrupt: None,
                dropped: Vec::new(),
            })
        }
        Err(e) => return Err(StateFileError::Read(e)),
    };
    match BoundState::from_json(&bytes) {
        Ok(Parsed { state, dropped }) => Ok(Loaded {
            state,
            corrupt: None,
            dropped,
        }),
        Err(reason) => {
            let aside = sibling(path, ".corrupt");
            let moved_to = aside.and_then(|aside| fs::rename(path, &aside).ok().map(|()| aside));
            Ok(Loaded {
                state: BoundState::default(),
                corrupt: Some(Corrupt { reason, moved_to }),
                dropped: Vec::new(),
            })
        }
    }
}

/// Atomically replaces the state file with `state`: the directory is created
/// if missing, the new contents go to a temporary file in the same directory,
/// which is fsynced and renamed over the old file; then the directory is
/// fsynced so the rename itself survives a power loss.
pub(crate) fn store(path: &Path, state: &BoundState) -> Result<(), StateFileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|source| StateFileError::CreateDir {
        dir: dir.clone(),
        source,
    })?;
    // The pid keeps two processes that were (wrongly) given the same file
    // from writing through one temporary file.
    let tmp =
        sibling(path, &format!(".tmp.{}", std::process::id())).ok_or(StateFileError::NoFileName)?;
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&state.to_json())?;
        file.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(StateFileError::WriteTemp { tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StateFileError::Rename { tmp, source });
    }
    // Some file systems refuse fsync on a directory; the data itself is
    // already durable, so a failure here only loses rename durability.
    if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "fsync of state directory failed");
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut name = name.to_os_string();
    name.push(suffix);
    Some(path.with_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn sample() -> BoundState {
        let mut state = BoundState::default();
        state.insert("lo", ip("192.0.2.10"), 32);
        state.insert("lo", ip("2001:db8:1:2::1"), 128);
        state.insert("dummy0", ip("2001:db8:1:2::1"), 128);
        state
    }

    #[test]
    fn json_round_trip_preserves_every_entry() {
        let state = sample();
        let parsed = BoundState::from_json(&state.to_json()).expect("parse");
        assert_eq!(parsed.state, state);
        assert!(parsed.dropped.is_empty());
    }

    #[test]
    fn file_format_is_versioned_and_readable() {
        let mut state = BoundState::default();
        state.insert("lo", ip("192.0.2.10"), 32);
        let json: serde_json::Value = serde_json::from_slice(&state.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1,
                "entries": [{"interface": "lo", "address": "192.0.2.10", "prefix_len": 32}]
            })
        );
    }

    #[test]
    fn same_address_on_two_interfaces_is_two_entries() {
        let mut state = sample();
        assert_eq!(state.len(), 3);
        assert_eq!(
            state.addresses_on("lo"),
            [ip("192.0.2.10"), ip("2001:db8:1:2::1")].into()
        );
        assert_eq!(state.addresses_on("dummy0"), [ip("2001:db8:1:2::1")].into());
        assert!(state.remove("dummy0", ip("2001:db8:1:2::1")));
        assert!(!state.remove("dummy0", ip("2001:db8:1:2::1")));
        assert_eq!(state.get("lo", ip("2001:db8:1:2::1")), Some(128));
        assert_eq!(state.get("dummy0", ip("2001:db8:1:2::1")), None);
    }

    #[test]
    fn by_interface_groups_entries() {
        let grouped = sample().by_interface();
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped["dummy0"], vec![(ip("2001:db8:1:2::1"), 128)]);
        assert_eq!(
            grouped["lo"],
            vec![(ip("192.0.2.10"), 32), (ip("2001:db8:1:2::1"), 128)]
        );
    }

    #[test]
    fn garbage_is_a_parse_error() {
        for bad in [
            &b""[..],
            b"not json",
            b"{\"version\": 1, \"entries\": [",
            b"[]",
            b"{\"entries\": []}",
            b"{\"version\": 1, \"entries\": [{\"interface\": \"lo\", \"address\": \"nope\", \"prefix_len\": 32}]}",
            b"{\"version\": 1, \"surprise\": true}",
            b"\xff\xfe\x00",
        ] {
            assert!(
                matches!(BoundState::from_json(bad), Err(ParseError::Json(_))),
                "{:?} should not parse",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn other_version_is_rejected() {
        let err = BoundState::from_json(br#"{"version": 2, "entries": []}"#).unwrap_err();
        assert!(matches!(err, ParseError::UnsupportedVersion(2)));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn invalid_entries_are_dropped_and_reported() {
        let json = br#"{"version": 1, "entries": [
            {"interface": "lo", "address": "192.0.2.10", "prefix_len": 32},
            {"interface": "lo", "address": "192.0.2.11", "prefix_len": 33},
            {"interface": "lo", "address": "2001:db8::1", "prefix_len": 0},
            {"interface": "", "address": "192.0.2.12", "prefix_len": 32},
            {"interface": "averyveryverylongname", "address": "192.0.2.13", "prefix_len": 32}
        ]}"#;
        let parsed = BoundState::from_json(json).expect("parse");
        assert_eq!(parsed.state.addresses_on("lo"), [ip("192.0.2.10")].into());
        assert_eq!(parsed.state.len(), 1);
        assert_eq!(parsed.dropped.len(), 4, "{:?}", parsed.dropped);
        assert!(parsed.dropped[0].contains("192.0.2.11/33"));
    }

    #[test]
    fn missing_entries_field_is_empty() {
        let parsed = BoundState::from_json(br#"{"version": 1}"#).expect("parse");
        assert!(parsed.state.is_empty());
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["lo", "dummy0", "eth0.100", "a-b_c", "fifteen_chars_x"] {
            assert!(validate_interface_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "eth0:1",
            "sixteen_chars_xx",
            "a\0b",
        ] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_of_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = load(&dir.path().join("bound.json")).expect("load");
        assert!(loaded.state.is_empty());
        assert!(loaded.corrupt.is_none());
    }

    #[test]
    fn store_creates_directory_and_load_reads_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("var/lib/sharedip/bound.json");
        let state = sample();
        store(&path, &state).expect("store");
        let loaded = load(&path).expect("load");
        assert_eq!(loaded.state, state);
        assert!(loaded.corrupt.is_none());
        // Overwrite with a smaller state: the file is replaced, not appended.
        let mut smaller = BoundState::default();
        smaller.insert("lo", ip("192.0.2.10"), 32);
        store(&path, &smaller).expect("store");
        assert_eq!(load(&path).expect("load").state, smaller);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bound.json")]);
    }

    #[test]
    fn corrupt_file_is_reported_moved_aside_and_treated_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bound.json");
        fs::write(&path, b"{ this is not json").expect("write");
        let loaded = load(&path).expect("load");
        assert!(loaded.state.is_empty());
        let corrupt = loaded.corrupt.expect("reported as corrupt");
        assert!(matches!(corrupt.reason, ParseError::Json(_)));
        let aside = corrupt.moved_to.expect("moved aside");
        assert_eq!(aside, dir.path().join("bound.json.corrupt"));
        assert_eq!(fs::read(&aside).expect("read aside"), b"{ this is not json");
        assert!(!path.exists());
        // The next store works normally.
        store(&path, &sample()).expect("store");
        assert_eq!(load(&path).expect("load").state, sample());
    }

    #[test]
    fn unreadable_path_is_an_error_not_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be cannot be read as a file.
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, StateFileError::Read(_)));
    }

    #[test]
    fn store_into_unwritable_location_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").expect("write");
        // The parent "directory" is a regular file.
        let err = store(&blocker.join("bound.json"), &sample()).unwrap_err();
        assert!(matches!(err, StateFileError::CreateDir { .. }), "{err}");
    }
}
