//! Linode's pagination: `page` (from 1) and `page_size` (25..=500, default 100), answered
//! with `{data, page, pages, results}`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::error::ApiError;

/// Default `page_size`.
pub const DEFAULT_PAGE_SIZE: u64 = 100;
/// Smallest `page_size` accepted.
pub const MIN_PAGE_SIZE: u64 = 25;
/// Largest `page_size` accepted.
pub const MAX_PAGE_SIZE: u64 = 500;

/// A requested page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u64,
    /// Items per page.
    pub page_size: u64,
}

impl Page {
    /// Reads `page` and `page_size` from the query string.
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let page = match q.get("page") {
            None => 1,
            Some(s) => s.parse::<u64>().ok().filter(|p| *p >= 1).ok_or_else(|| {
                ApiError::bad_request("page must be an integer of at least 1", "page")
            })?,
        };
        let page_size = match q.get("page_size") {
            None => DEFAULT_PAGE_SIZE,
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|p| (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(p))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("page_size must be an integer between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"),
                        "page_size",
                    )
                })?,
        };
        Ok(Self { page, page_size })
    }

    /// The envelope for this page of `items`. A page past the end has empty `data`;
    /// `pages` is at least 1.
    pub fn envelope(&self, items: Vec<Value>) -> Value {
        let results = items.len() as u64;
        let pages = results.div_ceil(self.page_size).max(1);
        let skip =
            usize::try_from((self.page - 1).saturating_mul(self.page_size)).unwrap_or(usize::MAX);
        let take = usize::try_from(self.page_size).unwrap_or(usize::MAX);
        let data: Vec<Value> = items.into_iter().skip(skip).take(take).collect();
        json!({"data": data, "page": self.page, "pages": pages, "results": results})
    }
}
