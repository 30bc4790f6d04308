//! The end-to-end lab (issue 4): traffic through the shared IP and reports of what it saw.
//! The lab itself (topology, routing, processes) lands separately.

pub mod report;
pub mod traffic;
