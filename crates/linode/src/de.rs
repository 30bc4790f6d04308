//! Lenient deserialization helpers: Linode returns `null` for many fields the spec types as
//! strings or arrays, and some addresses carry a `/prefix` suffix (`Linode.ipv6` is
//! `addr/128`). Malformed addresses still fail, as a decode error, never a panic.

use std::str::FromStr;

use serde::{de::Error as _, Deserialize, Deserializer};

/// `null` or absent → `T::default()`.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An address, optionally followed by `/prefix`; the prefix is dropped.
pub(crate) fn addr<'de, D, A>(d: D) -> Result<A, D::Error>
where
    D: Deserializer<'de>,
    A: FromStr,
{
    let s = String::deserialize(d)?;
    parse(&s).map_err(D::Error::custom)
}

/// Like [`addr`], with `null` and `""` meaning "none".
pub(crate) fn opt_addr<'de, D, A>(d: D) -> Result<Option<A>, D::Error>
where
    D: Deserializer<'de>,
    A: FromStr,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse(&s).map(Some).map_err(D::Error::custom),
    }
}

fn parse<A: FromStr>(s: &str) -> Result<A, String> {
    let trimmed = s.trim();
    let bare = match trimmed.split_once('/') {
        Some((a, len)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => a,
        _ => trimmed,
    };
    bare.parse()
        .map_err(|_| format!("invalid IP address {s:?}"))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;

    #[test]
    fn parse_accepts_optional_prefix_and_rejects_garbage() {
        assert_eq!(
            parse::<Ipv6Addr>("2600:3c03::1/128").unwrap(),
            "2600:3c03::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            parse::<IpAddr>("192.0.2.1").unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert!(parse::<IpAddr>("192.0.2.1/abc").is_err());
        assert!(parse::<IpAddr>("not-an-ip").is_err());
        assert!(parse::<Ipv6Addr>("192.0.2.1").is_err());
    }
}
