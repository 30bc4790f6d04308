//! Rendering of the SharedIP CustomResourceDefinition.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;
use sharedip_api::SharedIP;

/// Why the CRD cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot convert the CRD: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot render the CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The CRD generated from the Rust types, with its descriptions reflowed (see [`reflow`]).
pub fn crd() -> Result<CustomResourceDefinition, CrdError> {
    let mut value = serde_json::to_value(SharedIP::crd())?;
    reflow_descriptions(&mut value);
    Ok(serde_json::from_value(value)?)
}

/// The CRD as YAML, with a header telling readers where it comes from.
pub fn crd_yaml() -> Result<String, CrdError> {
    let body = serde_yaml::to_string(&crd()?)?;
    Ok(format!(
        "# Generated from crates/api/src/types.rs by `cargo run -p sharedip-operator --bin crdgen`.\n# Do not edit by hand.\n{body}"
    ))
}

fn reflow_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    Value::String(text) if k == "description" => *text = reflow(text),
                    _ => reflow_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph of a doc comment into one line, keeping blank-line
/// paragraph breaks and list items. Doc comments are wrapped at 100 columns for the source;
/// `kubectl explain` wraps text itself, so the source's line breaks would show as ragged
/// lines in the middle of sentences.
pub fn reflow(text: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let flush = |current: &mut Vec<String>, paragraphs: &mut Vec<String>| {
        if !current.is_empty() {
            paragraphs.push(current.join("\n"));
            current.clear();
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            flush(&mut current, &mut paragraphs);
            continue;
        }
        match current.last_mut() {
            Some(last) if !is_list_item(line) => {
                last.push(' ');
                last.push_str(line);
            }
            _ => current.push(line.to_string()),
        }
    }
    flush(&mut current, &mut paragraphs);
    paragraphs.join("\n\n")
}

fn is_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(". ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflows_paragraphs_and_keeps_breaks_and_lists() {
        assert_eq!(
            reflow("The shared address: a public\nIPv4 address.\n\nSecond\n  paragraph."),
            "The shared address: a public IPv4 address.\n\nSecond paragraph."
        );
        assert_eq!(
            reflow("Either:\n- one\n  continued\n- two\n1. three"),
            "Either:\n- one continued\n- two\n1. three"
        );
        assert_eq!(reflow("one line"), "one line");
    }

    #[test]
    fn generated_descriptions_have_no_hard_line_breaks() {
        let yaml_value = serde_json::to_value(crd().unwrap()).unwrap();
        let mut bad = Vec::new();
        fn walk(v: &Value, path: &str, bad: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, c) in m {
                        if let (true, Value::String(t)) = (k == "description", c) {
                            // A single newline is a hard break; "\n\n" separates paragraphs.
                            if t.replace("\n\n", "").contains('\n') {
                                bad.push(format!("{path}: {t:?}"));
                            }
                        }
                        walk(c, &format!("{path}.{k}"), bad);
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| walk(c, path, bad)),
                _ => {}
            }
        }
        walk(&yaml_value, "", &mut bad);
        assert!(bad.is_empty(), "hard line breaks:\n{}", bad.join("\n"));
        // The spec's description is one paragraph that reads as a sentence.
        let spec = &yaml_value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["address"]["description"];
        let text = spec.as_str().unwrap();
        assert!(
            text.contains(
                "IPv4 address (for example 192.0.2.10) or an address inside a routed IPv6 range"
            ),
            "{text}"
        );
    }
}
