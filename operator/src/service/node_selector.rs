//! Node selectors written as `kubectl get nodes -l` takes them, from Service annotations and
//! operator flags, turned into the `LabelSelector` a generated SharedIP carries.
//!
//! The grammar is Kubernetes' label selector syntax: comma-separated requirements `k=v`,
//! `k==v`, `k!=v`, `k in (v1,v2)`, `k notin (v1)`, `k` and `!k`. A `LabelSelector` has no
//! "not equal" operator; `NotIn` with one value means the same, a node without the label
//! included.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use sharedip_api::selector::{validate, SelectorProblem};

use super::EXCLUDE_LABEL;

/// Why a selector was refused; `term` counts from 1 and `text` is the term as written.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("the node selector is empty")]
    Empty,
    #[error("term {term} (at character {position}) is empty: remove the extra ','")]
    EmptyTerm { term: usize, position: usize },
    #[error("')' at character {position} has no matching '('")]
    UnopenedParenthesis { position: usize },
    #[error("term {term} {text:?}: {problem}")]
    Syntax {
        term: usize,
        text: String,
        problem: &'static str,
    },
    #[error("term {term} {text:?}: label key {key:?} {problem}")]
    InvalidKey {
        term: usize,
        text: String,
        key: String,
        problem: &'static str,
    },
    #[error("term {term} {text:?}: label value {value:?} {problem}")]
    InvalidValue {
        term: usize,
        text: String,
        value: String,
        problem: &'static str,
    },
    #[error("the node selector {0}")]
    Limits(SelectorProblem),
}

/// One requirement of the selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Parses a selector in `kubectl -l` syntax (whitespace tolerated around every token) into
/// `matchLabels` (for `=` and `==`) and `matchExpressions` (for the rest). Empty input is an
/// error: the caller treats a missing annotation or flag as "no selector".
pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
    if input.trim().is_empty() {
        return Err(SelectorError::Empty);
    }
    let mut labels = BTreeMap::new();
    let mut expressions = Vec::new();
    for (index, (position, text)) in split_terms(input)?.into_iter().enumerate() {
        let term = Term {
            number: index + 1,
            text: text.trim(),
        };
        if term.text.is_empty() {
            return Err(SelectorError::EmptyTerm {
                term: term.number,
                position,
            });
        }
        match term.parse()? {
            // A second, different value for a key cannot go into matchLabels; as an `In` it
            // keeps kubectl's meaning (no node matches both).
            Requirement::Equals(key, value) => match labels.get(&key) {
                Some(existing) if *existing == value => {}
                Some(_) => expressions.push(requirement(key, "In", [value].into())),
                None => {
                    labels.insert(key, value);
                }
            },
            Requirement::NotEquals(key, value) => {
                expressions.push(requirement(key, "NotIn", [value].into()));
            }
            Requirement::In(key, values) => expressions.push(requirement(key, "In", values)),
            Requirement::NotIn(key, values) => {
                expressions.push(requirement(key, "NotIn", values));
            }
            Requirement::Exists(key) => expressions.push(requirement(key, "Exists", [].into())),
            Requirement::DoesNotExist(key) => {
                expressions.push(requirement(key, "DoesNotExist", [].into()));
            }
        }
    }
    let selector = LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    };
    // The selector goes into a SharedIP, whose schema bounds it.
    validate(&selector).map_err(SelectorError::Limits)?;
    Ok(selector)
}

/// Adds `node.kubernetes.io/exclude-from-external-load-balancers DoesNotExist` to a selector.
pub fn excluding_lb_excluded(mut sel: LabelSelector) -> LabelSelector {
    let exclusion = requirement(EXCLUDE_LABEL.to_string(), "DoesNotExist", [].into());
    let expressions = sel.match_expressions.get_or_insert_with(Vec::new);
    if !expressions.contains(&exclusion) {
        expressions.push(exclusion);
    }
    sel
}

fn requirement(key: String, operator: &str, values: BTreeSet<String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key,
        operator: operator.to_string(),
        // Exists and DoesNotExist take no values at all, not an empty list.
        values: (!values.is_empty()).then(|| values.into_iter().collect()),
    }
}

/// Splits at the commas outside parentheses: (1-based character position, text) per term.
fn split_terms(input: &str) -> Result<Vec<(usize, &str)>, SelectorError> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    for (byte, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                return Err(SelectorError::UnopenedParenthesis {
                    position: input[..byte].chars().count() + 1,
                })
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push((input[..start].chars().count() + 1, &input[start..byte]));
                start = byte + 1;
            }
            _ => {}
        }
    }
    // An unclosed '(' is left in its term, whose parser says so.
    terms.push((input[..start].chars().count() + 1, &input[start..]));
    Ok(terms)
}

/// Characters that end a key or a value (the tokens of the selector grammar).
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | '<' | '>' | '(' | ')' | ',')
}

struct Term<'a> {
    number: usize,
    text: &'a str,
}

impl Term<'_> {
    fn parse(&self) -> Result<Requirement, SelectorError> {
        if let Some(rest) = self.text.strip_prefix('!') {
            let key = self.key(rest.trim())?;
            return Ok(Requirement::DoesNotExist(key));
        }
        let key_end = self.text.find(is_delimiter).unwrap_or(self.text.len());
        let (key, rest) = self.text.split_at(key_end);
        let key = self.key(key)?;
        let rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(Requirement::Exists(key));
        }
        if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            return Ok(Requirement::Equals(key, self.value(value.trim())?));
        }
        if let Some(value) = rest.strip_prefix("!=") {
            return Ok(Requirement::NotEquals(key, self.value(value.trim())?));
        }
        if let Some(list) = keyword(rest, "notin") {
            return Ok(Requirement::NotIn(key, self.values(list)?));
        }
        if let Some(list) = keyword(rest, "in") {
            return Ok(Requirement::In(key, self.values(list)?));
        }
        if rest.starts_with(['<', '>']) {
            return Err(
                self.syntax("'<' and '>' work in node affinity only, not in a label selector")
            );
        }
        Err(self.syntax("expected '=', '==', '!=', 'in' or 'notin' after the key"))
    }

    /// The values of `(v1, v2)`; at least one, each possibly empty as in kubectl.
    fn values(&self, list: &str) -> Result<BTreeSet<String>, SelectorError> {
        let list = list.trim();
        let Some(open) = list.strip_prefix('(') else {
            return Err(self.syntax("expected '(' after 'in' or 'notin'"));
        };
        let Some(inner) = open.strip_suffix(')') else {
            return Err(self.syntax("the '(' has no matching ')', or text follows it"));
        };
        if inner.contains(['(', ')']) {
            return Err(self.syntax("parentheses cannot nest"));
        }
        if inner.trim().is_empty() {
            return Err(self.syntax("'in' and 'notin' need at least one value"));
        }
        inner.split(',').map(|v| self.value(v.trim())).collect()
    }

    fn key(&self, key: &str) -> Result<String, SelectorError> {
        match key_problem(key) {
            None => Ok(key.to_string()),
            Some(problem) => Err(SelectorError::InvalidKey {
                term: self.number,
                text: self.text.to_string(),
                key: key.to_string(),
                problem,
            }),
        }
    }

    fn value(&self, value: &str) -> Result<String, SelectorError> {
        match value_problem(value) {
            None => Ok(value.to_string()),
            Some(problem) => Err(SelectorError::InvalidValue {
                term: self.number,
                text: self.text.to_string(),
                value: value.to_string(),
                problem,
            }),
        }
    }

    fn syntax(&self, problem: &'static str) -> SelectorError {
        SelectorError::Syntax {
            term: self.number,
            text: self.text.to_string(),
            problem,
        }
    }
}

/// The text after the operator word `word`, when `rest` starts with it as a whole word.
fn keyword<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    (after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == '('))
        .then_some(after)
}

const NAME_CHARACTERS: &str = "must be at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit";

fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("is missing");
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.len() > 253 {
                return Some("has a prefix longer than 253 characters");
            }
            if !is_dns_subdomain(prefix) {
                return Some("has a prefix (before '/') that is not a DNS subdomain: lowercase letters, digits, '-' and '.', each part beginning and ending with a letter or digit");
            }
            if name.is_empty() {
                return Some("has no name after '/'");
            }
            name
        }
        None => key,
    };
    (!is_label_name(name)).then_some(
        "has a name (after the optional prefix and '/') that is not at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit",
    )
}

fn value_problem(value: &str) -> Option<&'static str> {
    (!value.is_empty() && !is_label_name(value)).then_some(NAME_CHARACTERS)
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        let b = part.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use kube::core::{Selector, SelectorExt};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Whether the parsed selector, as kube's matcher reads it, selects a node with `pairs`.
    fn selects(input: &str, pairs: &[(&str, &str)]) -> bool {
        let selector = Selector::try_from(parse(input).unwrap()).unwrap();
        selector.matches(&labels(pairs))
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        requirement(
            key.to_string(),
            operator,
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn equality_goes_into_match_labels() {
        let sel = parse("role=edge,zone==a").unwrap();
        assert_eq!(
            sel.match_labels,
            Some(labels(&[("role", "edge"), ("zone", "a")]))
        );
        assert_eq!(sel.match_expressions, None);
        assert!(selects("role=edge", &[("role", "edge"), ("x", "y")]));
        assert!(!selects("role=edge", &[("role", "core")]));
        assert!(!selects("role=edge", &[]));
        assert!(selects("role==edge", &[("role", "edge")]));
    }

    #[test]
    fn an_empty_value_is_allowed() {
        let sel = parse("role=").unwrap();
        assert_eq!(sel.match_labels, Some(labels(&[("role", "")])));
        assert!(selects("role=", &[("role", "")]));
        assert!(!selects("role=", &[("role", "edge")]));
        assert!(!selects("role=", &[]));
    }

    #[test]
    fn not_equal_also_matches_nodes_without_the_label() {
        let sel = parse("role!=edge").unwrap();
        assert_eq!(
            sel.match_expressions,
            Some(vec![expr("role", "NotIn", &["edge"])])
        );
        assert!(selects("role!=edge", &[]));
        assert!(selects("role!=edge", &[("role", "core")]));
        assert!(!selects("role!=edge", &[("role", "edge")]));
    }

    #[test]
    fn set_requirements() {
        let sel = parse("zone in (b, a), tier notin (db)").unwrap();
        assert_eq!(
            sel.match_expressions,
            Some(vec![
                expr("zone", "In", &["a", "b"]),
                expr("tier", "NotIn", &["db"])
            ])
        );
        assert!(selects("zone in (a,b)", &[("zone", "b")]));
        assert!(!selects("zone in (a,b)", &[("zone", "c")]));
        assert!(!selects("zone in (a,b)", &[]));
        assert!(selects("tier notin (db)", &[]));
        assert!(selects("tier notin (db)", &[("tier", "web")]));
        assert!(!selects("tier notin (db)", &[("tier", "db")]));
        // As in kubectl, a trailing ',' inside the list adds the empty value.
        assert_eq!(
            parse("zone in (a,)").unwrap().match_expressions,
            Some(vec![expr("zone", "In", &["", "a"])])
        );
        assert!(selects("zone in(a)", &[("zone", "a")]));
    }

    #[test]
    fn existence_requirements() {
        let sel = parse("gpu,!spot").unwrap();
        assert_eq!(
            sel.match_expressions,
            Some(vec![
                expr("gpu", "Exists", &[]),
                expr("spot", "DoesNotExist", &[])
            ])
        );
        assert_eq!(sel.match_expressions.unwrap()[0].values, None);
        assert!(selects("gpu", &[("gpu", "")]));
        assert!(!selects("gpu", &[]));
        assert!(selects("!spot", &[]));
        assert!(!selects("!spot", &[("spot", "true")]));
    }

    #[test]
    fn whitespace_is_tolerated() {
        let tight = parse("example.com/role=edge,zone in (a,b),!spot,gpu,tier!=db").unwrap();
        let loose =
            parse("  example.com/role  =  edge ,zone   in(  a ,b )  , ! spot,\tgpu ,tier != db ")
                .unwrap();
        assert_eq!(tight, loose);
        let node = [("example.com/role", "edge"), ("zone", "a"), ("gpu", "1")];
        assert!(selects(
            "example.com/role=edge,zone in (a,b),!spot,gpu,tier!=db",
            &node
        ));
        assert!(!selects(
            "example.com/role=edge,zone in (a,b),!spot,gpu,tier!=db",
            &[("example.com/role", "edge"), ("zone", "a")]
        ));
    }

    #[test]
    fn conflicting_equalities_select_nothing() {
        assert!(!selects("role=a,role=b", &[("role", "a")]));
        assert!(!selects("role=a,role=b", &[("role", "b")]));
        // The same requirement twice is the requirement once.
        assert_eq!(parse("role=a, role==a").unwrap(), parse("role=a").unwrap());
    }

    #[test]
    fn empty_input_and_empty_terms_are_refused() {
        assert_eq!(parse(""), Err(SelectorError::Empty));
        assert_eq!(parse("  "), Err(SelectorError::Empty));
        assert_eq!(
            parse("a=b,,c"),
            Err(SelectorError::EmptyTerm {
                term: 2,
                position: 5
            })
        );
        assert_eq!(
            parse("a=b,"),
            Err(SelectorError::EmptyTerm {
                term: 2,
                position: 5
            })
        );
        assert_eq!(
            parse(",a"),
            Err(SelectorError::EmptyTerm {
                term: 1,
                position: 1
            })
        );
        assert!(parse("a=b, ").unwrap_err().to_string().contains("term 2"));
    }

    #[test]
    fn malformed_sets_are_refused() {
        for (input, problem) in [
            ("zone in ()", "at least one value"),
            ("zone in (  )", "at least one value"),
            ("zone in (a,b", "no matching ')'"),
            ("zone in (a) x", "no matching ')'"),
            ("zone in ((a))", "cannot nest"),
            ("zone in a", "expected '('"),
            ("zone notin", "expected '('"),
        ] {
            let err = parse(input).unwrap_err();
            assert!(
                matches!(&err, SelectorError::Syntax { term: 1, .. }),
                "{input}: {err:?}"
            );
            assert!(err.to_string().contains(problem), "{input}: {err}");
        }
        assert_eq!(
            parse("zone in a,b)"),
            Err(SelectorError::UnopenedParenthesis { position: 12 })
        );
    }

    #[test]
    fn other_syntax_is_refused() {
        for (input, problem) in [
            ("cpu>4", "node affinity"),
            ("cpu < 4", "node affinity"),
            ("role edge", "expected '='"),
            ("role ! = edge", "expected '='"),
            ("role inside (a)", "expected '='"),
        ] {
            let err = parse(input).unwrap_err();
            assert!(
                matches!(&err, SelectorError::Syntax { .. }),
                "{input}: {err:?}"
            );
            assert!(err.to_string().contains(problem), "{input}: {err}");
            assert!(err.to_string().contains(input.trim()), "{input}: {err}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        let long_name = "a".repeat(64);
        let long_prefix = format!("{}/a", "b".repeat(254));
        for key in [
            "",
            "-role",
            "role-",
            "ro le",
            "Example.com/role",
            "example..com/role",
            "example.com/",
            "a/b/c",
            long_name.as_str(),
            long_prefix.as_str(),
        ] {
            let input = format!("{key}=x");
            let err = parse(&input).unwrap_err();
            assert!(
                matches!(
                    &err,
                    SelectorError::InvalidKey { .. } | SelectorError::Syntax { .. }
                ),
                "{input}: {err:?}"
            );
        }
        assert!(matches!(
            parse("!").unwrap_err(),
            SelectorError::InvalidKey { .. }
        ));
        assert!(matches!(
            parse("a, !Bad_Prefix.io/x").unwrap_err(),
            SelectorError::InvalidKey { term: 2, .. }
        ));
        let err = parse("Example.com/role=x").unwrap_err();
        assert!(err.to_string().contains("DNS subdomain"), "{err}");
        // The longest valid key: a 253-character prefix and a 63-character name.
        let prefix = vec!["a".repeat(63); 4].join(".");
        assert_eq!(prefix.len(), 255);
        let ok = format!("{}/{}", &prefix[..253], "n".repeat(63));
        assert!(parse(&format!("{ok}=x")).is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        let long = "v".repeat(64);
        for value in ["-x", "x-", "a/b", "ü", long.as_str()] {
            for input in [format!("k={value}"), format!("k in (a,{value})")] {
                let err = parse(&input).unwrap_err();
                assert_eq!(
                    err,
                    SelectorError::InvalidValue {
                        term: 1,
                        text: input.clone(),
                        value: value.to_string(),
                        problem: NAME_CHARACTERS,
                    },
                    "{input}"
                );
            }
        }
        assert!(parse(&format!("k={}", "v".repeat(63))).is_ok());
        // Spaces inside a value end it, and the rest is no value.
        assert!(matches!(
            parse("k=a b").unwrap_err(),
            SelectorError::InvalidValue { .. }
        ));
    }

    #[test]
    fn selectors_over_the_schema_bounds_are_refused() {
        let input: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
        assert!(matches!(
            parse(&input.join(",")),
            Err(SelectorError::Limits(SelectorProblem::TooManyExpressions))
        ));
    }

    #[test]
    fn excluding_lb_excluded_adds_the_exclusion_once() {
        let sel = excluding_lb_excluded(parse("role=edge").unwrap());
        assert_eq!(
            sel.match_expressions,
            Some(vec![expr(EXCLUDE_LABEL, "DoesNotExist", &[])])
        );
        assert_eq!(excluding_lb_excluded(sel.clone()), sel);
        let selector = Selector::try_from(sel).unwrap();
        assert!(selector.matches(&labels(&[("role", "edge")])));
        assert!(!selector.matches(&labels(&[("role", "edge"), (EXCLUDE_LABEL, "")])));
        assert!(!selector.matches(&labels(&[("role", "edge"), (EXCLUDE_LABEL, "true")])));
        let all = excluding_lb_excluded(LabelSelector::default());
        let selector = Selector::try_from(all).unwrap();
        assert!(selector.matches(&labels(&[])));
        assert!(!selector.matches(&labels(&[(EXCLUDE_LABEL, "")])));
    }
}
