//! The Linode types `GET /linode/types` lists, and the specs a Linode of each type reports.
//!
//! A handful of real types with Linode's published sizes and prices (USD, 2024): enough for
//! a client to pick the cheapest `nanode` and for a Linode's `specs` to look right.

use serde_json::{json, Value};

/// One Linode type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinodeType {
    /// ID, e.g. `g6-nanode-1`.
    pub id: &'static str,
    /// Display label.
    pub label: &'static str,
    /// `nanode`, `standard`, `dedicated`, `premium`, `gpu` or `highmem`.
    pub class: &'static str,
    /// Disk in MB.
    pub disk: u64,
    /// Memory in MB.
    pub memory: u64,
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Monthly transfer in GB.
    pub transfer: u64,
    /// Outbound bandwidth in Mbit/s.
    pub network_out: u64,
    /// Price per hour and per month.
    pub price: (f64, f64),
    /// Backups add-on price per hour and per month.
    pub backups: (f64, f64),
}

/// The types the stand-in knows, cheapest first.
pub const LINODE_TYPES: &[LinodeType] = &[
    LinodeType {
        id: "g6-nanode-1",
        label: "Nanode 1GB",
        class: "nanode",
        disk: 25_600,
        memory: 1_024,
        vcpus: 1,
        transfer: 1_000,
        network_out: 1_000,
        price: (0.0075, 5.0),
        backups: (0.003, 2.0),
    },
    LinodeType {
        id: "g6-standard-1",
        label: "Linode 2GB",
        class: "standard",
        disk: 51_200,
        memory: 2_048,
        vcpus: 1,
        transfer: 2_000,
        network_out: 2_000,
        price: (0.018, 12.0),
        backups: (0.004, 2.5),
    },
    LinodeType {
        id: "g6-standard-2",
        label: "Linode 4GB",
        class: "standard",
        disk: 81_920,
        memory: 4_096,
        vcpus: 2,
        transfer: 4_000,
        network_out: 4_000,
        price: (0.036, 24.0),
        backups: (0.008, 5.0),
    },
    LinodeType {
        id: "g6-standard-4",
        label: "Linode 8GB",
        class: "standard",
        disk: 163_840,
        memory: 8_192,
        vcpus: 4,
        transfer: 5_000,
        network_out: 5_000,
        price: (0.072, 48.0),
        backups: (0.015, 10.0),
    },
    LinodeType {
        id: "g6-dedicated-2",
        label: "Dedicated 4GB",
        class: "dedicated",
        disk: 81_920,
        memory: 4_096,
        vcpus: 2,
        transfer: 4_000,
        network_out: 4_000,
        price: (0.054, 36.0),
        backups: (0.008, 5.0),
    },
];

/// A type by ID.
pub fn find(id: &str) -> Option<&'static LinodeType> {
    LINODE_TYPES.iter().find(|t| t.id == id)
}

impl LinodeType {
    /// The type as an item of `GET /linode/types`.
    pub fn render(&self) -> Value {
        json!({
            "id": self.id,
            "label": self.label,
            "class": self.class,
            "disk": self.disk,
            "memory": self.memory,
            "vcpus": self.vcpus,
            "gpus": 0,
            "transfer": self.transfer,
            "network_out": self.network_out,
            "price": {"hourly": self.price.0, "monthly": self.price.1},
            "region_prices": [],
            "addons": {"backups": {
                "price": {"hourly": self.backups.0, "monthly": self.backups.1},
                "region_prices": [],
            }},
            "successor": null,
        })
    }
}
