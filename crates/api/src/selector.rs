//! Label selectors of a SharedIP: their CRD schema, with the rules `kubectl apply` enforces, and
//! the same rules in Rust.
//!
//! The apiserver validates a built-in object's label selector in Go code, but a custom
//! resource only gets what its schema says; without rules, an unknown operator, `In` without
//! values or a malformed key would be stored and then select nothing, or fail in a controller,
//! far from the `kubectl apply` that caused it. The rules are CEL (`x-kubernetes-validations`)
//! plus an `enum` for the operator. CEL rules have a cost budget that the apiserver estimates
//! from the largest input the schema allows, so every list, map and string here is bounded
//! (generously: a node selector with 32 terms is already unusual).
//!
//! The Rust check ([`validate`]) applies the same rules to objects stored before the CRD had
//! them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::{json_schema, Schema, SchemaGenerator};

/// Most `matchLabels` entries and `matchExpressions` terms a selector may have.
pub const MAX_TERMS: u32 = 32;
/// Most values of one `In`/`NotIn` term.
pub const MAX_VALUES: u32 = 64;
/// Longest label key: a 253-character DNS subdomain prefix, '/', a 63-character name.
pub const MAX_KEY_LENGTH: u32 = 317;
/// Longest label value (and key name).
pub const MAX_VALUE_LENGTH: u32 = 63;

/// A label key as Kubernetes defines it: an optional DNS subdomain prefix and '/', then a name
/// of 1-63 alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric.
pub const KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$";
/// The prefix of a label key is at most 253 characters.
pub const KEY_PREFIX_PATTERN: &str = "^([^/]{1,253}/)?[^/]*$";
/// A label value: empty, or up to 63 alphanumerics, '-', '_' or '.', beginning and ending with
/// an alphanumeric.
pub const VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

const KEY_RULES: &str = "must be a label key: an optional DNS subdomain prefix (at most 253 characters) and '/', then a name of at most 63 characters (letters, digits, '-', '_', '.'), beginning and ending with a letter or digit, for example sharedip.io/role";
const VALUE_RULES: &str = "must be label values: at most 63 characters (letters, digits, '-', '_', '.'), beginning and ending with a letter or digit";

/// CEL rule (on the selector) for the keys of `matchLabels`.
pub fn match_labels_keys_rule() -> String {
    format!(
        "!has(self.matchLabels) || self.matchLabels.all(k, k.matches('{KEY_PATTERN}') && k.matches('{KEY_PREFIX_PATTERN}'))"
    )
}
pub fn match_labels_keys_message() -> String {
    format!("matchLabels keys {KEY_RULES}")
}

/// CEL rule (on the selector) for the values of `matchLabels`.
pub fn match_labels_values_rule() -> String {
    format!("!has(self.matchLabels) || self.matchLabels.all(k, self.matchLabels[k].matches('{VALUE_PATTERN}'))")
}
pub fn match_labels_values_message() -> String {
    format!("matchLabels values {VALUE_RULES}")
}

/// The schema of a `LabelSelector` with bounds and the rules on each `matchExpressions` term.
/// The rules on the whole selector (not empty, `matchLabels`) are set where the selector is
/// used, so their messages can name it.
// One JSON Schema literal, read side by side with the CRD it produces: splitting it would hide
// nothing.
#[allow(clippy::too_many_lines)]
pub fn label_selector_schema(_: &mut SchemaGenerator) -> Schema {
    let term_rules = serde_json::json!([
        {
            "rule": format!("self.key.matches('{KEY_PATTERN}') && self.key.matches('{KEY_PREFIX_PATTERN}')"),
            "message": format!("matchExpressions key {KEY_RULES}"),
            "fieldPath": ".key",
        },
        {
            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
            "message": "matchExpressions with operator In or NotIn need at least one value",
            "fieldPath": ".values",
        },
        {
            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
            "message": "matchExpressions with operator Exists or DoesNotExist take no values",
            "fieldPath": ".values",
        },
        {
            "rule": format!("!has(self.values) || self.values.all(v, v.matches('{VALUE_PATTERN}'))"),
            "message": format!("matchExpressions values {VALUE_RULES}"),
            "fieldPath": ".values",
        },
    ]);
    json_schema!({
        "type": "object",
        "description": "A label selector: matchLabels and matchExpressions, all of which must match (ANDed).",
        "properties": {
            "matchLabels": {
                "description": "Labels the object must have, each with exactly this value. Equivalent to matchExpressions terms with operator In and this one value.",
                "type": "object",
                "maxProperties": MAX_TERMS,
                "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
            },
            "matchExpressions": {
                "description": "Label requirements (key, operator, values).",
                "type": "array",
                "maxItems": MAX_TERMS,
                "items": {
                    "type": "object",
                    "description": "A label requirement: the key, and how its value relates to the values.",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key, for example sharedip.io/role.",
                            "type": "string",
                            "maxLength": MAX_KEY_LENGTH,
                        },
                        "operator": {
                            "description": "In: the label has one of the values. NotIn: the label is missing or has none of them. Exists: the label is set (no values). DoesNotExist: the label is not set (no values).",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "description": "The values: at least one for In and NotIn, none for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": MAX_VALUES,
                            "items": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
                        },
                    },
                    "x-kubernetes-validations": term_rules,
                },
            },
        },
        "x-kubernetes-map-type": "atomic",
    })
}

/// Why a selector is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorProblem {
    #[error("has more than {MAX_TERMS} matchLabels")]
    TooManyLabels,
    #[error("has more than {MAX_TERMS} matchExpressions")]
    TooManyExpressions,
    #[error("matchLabels key {0:?} {KEY_RULES}")]
    LabelKey(String),
    #[error("matchLabels value {1:?} of key {0:?} {VALUE_RULES}")]
    LabelValue(String, String),
    #[error("matchExpressions key {0:?} {KEY_RULES}")]
    ExpressionKey(String),
    #[error("matchExpressions operator {0:?} is not one of In, NotIn, Exists, DoesNotExist")]
    Operator(String),
    #[error("matchExpressions with operator {1} on key {0:?} need at least one value")]
    MissingValues(String, String),
    #[error("matchExpressions with operator {1} on key {0:?} take no values")]
    UnexpectedValues(String, String),
    #[error("matchExpressions on key {0:?} has more than {MAX_VALUES} values")]
    TooManyValues(String),
    #[error("matchExpressions value {1:?} of key {0:?} {VALUE_RULES}")]
    ExpressionValue(String, String),
}

/// Applies the schema's rules to a selector.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorProblem> {
    let labels = selector.match_labels.as_ref();
    if labels.is_some_and(|l| l.len() > MAX_TERMS as usize) {
        return Err(SelectorProblem::TooManyLabels);
    }
    for (k, v) in labels.into_iter().flatten() {
        if !is_label_key(k) {
            return Err(SelectorProblem::LabelKey(k.clone()));
        }
        if !is_label_value(v) {
            return Err(SelectorProblem::LabelValue(k.clone(), v.clone()));
        }
    }
    let exprs = selector.match_expressions.as_deref().unwrap_or_default();
    if exprs.len() > MAX_TERMS as usize {
        return Err(SelectorProblem::TooManyExpressions);
    }
    for e in exprs {
        if !is_label_key(&e.key) {
            return Err(SelectorProblem::ExpressionKey(e.key.clone()));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorProblem::MissingValues(
                    e.key.clone(),
                    e.operator.clone(),
                ))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorProblem::UnexpectedValues(
                    e.key.clone(),
                    e.operator.clone(),
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(SelectorProblem::Operator(other.to_string())),
        }
        if values.len() > MAX_VALUES as usize {
            return Err(SelectorProblem::TooManyValues(e.key.clone()));
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            return Err(SelectorProblem::ExpressionValue(e.key.clone(), v.clone()));
        }
    }
    Ok(())
}

/// 1-63 characters of `[-A-Za-z0-9_.]`, beginning and ending with an alphanumeric.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_VALUE_LENGTH as usize
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated parts of lowercase
/// alphanumerics and '-', each beginning and ending with an alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            }]),
        }
    }

    fn labels(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            match_expressions: None,
        }
    }

    #[test]
    fn accepts_what_kubernetes_accepts() {
        for s in [
            labels("sharedip.io/role", "primary"),
            labels("kubernetes.io/hostname", "lke1-abc-1"),
            labels("role", ""),
            labels("a", "b"),
            labels(&format!("{}/{}", "a".repeat(253), "n".repeat(63)), "v"),
            expr("pool", "In", Some(&["x", "y"])),
            expr("pool", "NotIn", Some(&["x"])),
            expr("topology.kubernetes.io/zone", "Exists", None),
            expr("pool", "DoesNotExist", Some(&[])),
        ] {
            assert_eq!(validate(&s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        let cases = [
            (expr("pool", "Near", None), "operator \"Near\""),
            (expr("pool", "in", Some(&["x"])), "operator \"in\""),
            (expr("pool", "In", None), "need at least one value"),
            (expr("pool", "NotIn", Some(&[])), "need at least one value"),
            (expr("pool", "Exists", Some(&["x"])), "take no values"),
            (
                expr("-pool", "Exists", None),
                "matchExpressions key \"-pool\"",
            ),
            (expr("a/b/c", "Exists", None), "key \"a/b/c\""),
            (
                expr("Example.com/x", "Exists", None),
                "key \"Example.com/x\"",
            ),
            (expr("", "Exists", None), "key \"\""),
            (expr(&"k".repeat(64), "Exists", None), "must be a label key"),
            (
                expr("pool", "In", Some(&["bad value"])),
                "value \"bad value\"",
            ),
            (
                labels("role=primary", "x"),
                "matchLabels key \"role=primary\"",
            ),
            (labels("/role", "x"), "matchLabels key"),
            (
                labels(&format!("{}/n", "a".repeat(254)), "x"),
                "matchLabels key",
            ),
            (labels("role", "-x"), "matchLabels value \"-x\""),
            (labels("role", &"v".repeat(64)), "matchLabels value"),
        ];
        for (s, want) in cases {
            let e = validate(&s).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let many: std::collections::BTreeMap<String, String> = (0..=MAX_TERMS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let s = LabelSelector {
            match_labels: Some(many),
            match_expressions: None,
        };
        assert_eq!(validate(&s), Err(SelectorProblem::TooManyLabels));
        let values: Vec<String> = (0..=MAX_VALUES).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(
            validate(&expr("k", "In", Some(&refs))),
            Err(SelectorProblem::TooManyValues("k".into()))
        );
    }

    /// The Rust checks and the CEL patterns agree on the cases above (the patterns are what the
    /// apiserver runs; `e2e/tests/crd_validation.rs` checks them there).
    #[test]
    fn schema_is_bounded_everywhere() {
        let s = label_selector_schema(&mut SchemaGenerator::default());
        let v = s.as_value();
        assert_eq!(v["properties"]["matchLabels"]["maxProperties"], MAX_TERMS);
        let ml = &v["properties"]["matchLabels"]["additionalProperties"];
        assert_eq!(ml["maxLength"], MAX_VALUE_LENGTH);
        let me = &v["properties"]["matchExpressions"];
        assert_eq!(me["maxItems"], MAX_TERMS);
        let item = &me["items"]["properties"];
        assert_eq!(item["key"]["maxLength"], MAX_KEY_LENGTH);
        assert_eq!(item["values"]["maxItems"], MAX_VALUES);
        assert_eq!(item["values"]["items"]["maxLength"], MAX_VALUE_LENGTH);
        assert_eq!(
            me["items"]["x-kubernetes-validations"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
    }
}
