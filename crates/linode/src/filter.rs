//! Encoding of Linode's `X-Filter` header.

use reqwest::header::HeaderValue;

/// Serializes a filter as compact JSON that is valid as an HTTP header value.
///
/// serde_json leaves non-ASCII characters (and DEL) unescaped, which HTTP headers cannot carry;
/// such characters can only occur inside JSON strings, where `\uXXXX` escapes are equivalent.
pub(crate) fn header_value(filter: &serde_json::Value) -> HeaderValue {
    let json = filter.to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    // Every byte is now printable ASCII: serde_json escapes control characters itself.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("{}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ascii_filter_is_compact_json() {
        let f = json!({"region": "us-east", "+order_by": "id"});
        let v = header_value(&f);
        let back: serde_json::Value = serde_json::from_str(v.to_str().unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(!v.to_str().unwrap().contains(' '));
    }

    #[test]
    fn non_ascii_is_escaped_and_round_trips() {
        let f = json!({"label": "nœud-🚀\u{7f}\n"});
        let v = header_value(&f);
        let s = v.to_str().unwrap();
        assert!(s.is_ascii());
        let back: serde_json::Value = serde_json::from_str(s).unwrap();
        assert_eq!(back, f);
    }
}
