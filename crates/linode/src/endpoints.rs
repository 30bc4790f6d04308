//! Path templates of the endpoints the client calls, as reported to [`crate::ApiObserver`]
//! and in errors. Metrics can pre-register these labels.

/// `GET /linode/instances` (paginated), `POST /linode/instances`.
pub const LINODES: &str = "/linode/instances";
/// `GET`/`DELETE /linode/instances/{linodeId}`.
pub const LINODE: &str = "/linode/instances/{linodeId}";
/// `GET`/`POST /linode/instances/{linodeId}/ips`.
pub const LINODE_IPS: &str = "/linode/instances/{linodeId}/ips";
/// `DELETE /linode/instances/{linodeId}/ips/{address}`.
pub const LINODE_IP: &str = "/linode/instances/{linodeId}/ips/{address}";
/// `GET /linode/types` (paginated).
pub const LINODE_TYPES: &str = "/linode/types";
/// `GET /networking/ips` (paginated).
pub const IPS: &str = "/networking/ips";
/// `GET /networking/ips/{address}`.
pub const IP: &str = "/networking/ips/{address}";
/// `POST /networking/ips/share`.
pub const IPS_SHARE: &str = "/networking/ips/share";
/// `POST /networking/ips/assign`.
pub const IPS_ASSIGN: &str = "/networking/ips/assign";
/// `GET /networking/ipv6/ranges` (paginated), `POST /networking/ipv6/ranges`.
pub const IPV6_RANGES: &str = "/networking/ipv6/ranges";
/// `GET`/`DELETE /networking/ipv6/ranges/{range}`.
pub const IPV6_RANGE: &str = "/networking/ipv6/ranges/{range}";
/// `GET /networking/reserved/ips` (paginated), `POST /networking/reserved/ips`. Experimental.
pub const RESERVED_IPS: &str = "/networking/reserved/ips";
/// `DELETE /networking/reserved/ips/{address}`. Experimental.
pub const RESERVED_IP: &str = "/networking/reserved/ips/{address}";

/// Every template above.
pub const ALL: &[&str] = &[
    LINODES,
    LINODE,
    LINODE_IPS,
    LINODE_IP,
    LINODE_TYPES,
    IPS,
    IP,
    IPS_SHARE,
    IPS_ASSIGN,
    IPV6_RANGES,
    IPV6_RANGE,
    RESERVED_IPS,
    RESERVED_IP,
];
