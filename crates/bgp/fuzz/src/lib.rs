//! Fuzzing support for the sharedip BGP decoder: the [`oracle`] that checks our decoder
//! against an independent one. See `README.md` next to this crate.

pub mod oracle;
