//! Linode region → data-center id, which names the route servers (`2600:3c0f:<dcid>:34::1..4`).
//!
//! No Linode API returns the id, so this is the Linode CCM's table (it matches the guides);
//! `--dcid` (or `DCID`) overrides it for regions added later.

/// Every region we know, with its data-center id.
pub const REGIONS: &[(&str, u16)] = &[
    ("us-central", 2),
    ("us-west", 3),
    ("us-southeast", 4),
    ("us-east", 6),
    ("eu-west", 7),
    ("ap-south", 9),
    ("eu-central", 10),
    ("ap-northeast", 11),
    ("ap-west", 14),
    ("ca-central", 15),
    ("ap-southeast", 16),
    ("us-iad", 17),
    ("us-ord", 18),
    ("fr-par", 19),
    ("us-sea", 20),
    ("br-gru", 21),
    ("nl-ams", 22),
    ("se-sto", 23),
    ("es-mad", 24),
    ("in-maa", 25),
    ("jp-osa", 26),
    ("it-mil", 27),
    ("us-mia", 28),
    ("id-cgk", 29),
    ("us-lax", 30),
    ("gb-lon", 44),
    ("au-mel", 45),
    ("in-bom-2", 46),
    ("sg-sin-2", 48),
];

/// The data-center id of a region, if the table knows it.
pub fn for_region(region: &str) -> Option<u16> {
    let region = region.trim();
    REGIONS
        .iter()
        .find(|(r, _)| r.eq_ignore_ascii_case(region))
        .map(|(_, id)| *id)
}

/// Why no data-center id could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcidError {
    #[error("region {0:?} is not in the data-center table; set --dcid (env DCID) to its id")]
    UnknownRegion(String),
    #[error("the node has no {label} label and no --dcid (env DCID) is set")]
    NoRegion { label: &'static str },
}

/// The override if set, else the table's id for `region`.
pub fn resolve(override_id: Option<u16>, region: Option<&str>) -> Result<u16, DcidError> {
    if let Some(id) = override_id {
        return Ok(id);
    }
    match region {
        Some(r) => for_region(r).ok_or_else(|| DcidError::UnknownRegion(r.to_string())),
        None => Err(DcidError::NoRegion {
            label: sharedip_api::REGION_LABEL,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_design() {
        // Every pair of the region table (the former CCM's map, which matches Linode's guide),
        // verbatim.
        let design =
            "nl-ams 22, us-southeast 4, in-maa 25, us-ord 18, us-central 2, eu-central 10, \
            us-west 3, id-cgk 29, eu-west 7, gb-lon 44, us-lax 30, es-mad 24, au-mel 45, \
            us-mia 28, it-mil 27, ap-west 14, in-bom-2 46, us-east 6, jp-osa 26, fr-par 19, \
            br-gru 21, us-sea 20, ap-south 9, sg-sin-2 48, se-sto 23, ap-southeast 16, \
            ap-northeast 11, ca-central 15, us-iad 17";
        let pairs: Vec<(&str, u16)> = design
            .split(',')
            .map(|p| {
                let mut it = p.split_whitespace();
                (it.next().unwrap(), it.next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(pairs.len(), REGIONS.len());
        for (region, id) in pairs {
            assert_eq!(for_region(region), Some(id), "{region}");
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<u16> = REGIONS.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), REGIONS.len());
    }

    #[test]
    fn lookup_is_lenient_about_case_and_spaces() {
        assert_eq!(for_region(" US-ORD "), Some(18));
        assert_eq!(for_region("mars-1"), None);
    }

    #[test]
    fn override_wins() {
        assert_eq!(resolve(Some(99), Some("us-ord")), Ok(99));
        assert_eq!(resolve(Some(99), None), Ok(99));
        assert_eq!(resolve(None, Some("us-ord")), Ok(18));
        assert_eq!(
            resolve(None, Some("mars-1")),
            Err(DcidError::UnknownRegion("mars-1".into()))
        );
        assert!(matches!(
            resolve(None, None),
            Err(DcidError::NoRegion { .. })
        ));
    }
}
