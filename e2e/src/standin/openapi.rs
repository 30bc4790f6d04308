//! Validates JSON bodies against the response schemas of an OpenAPI 3.0 document (the
//! Linode subset in `crates/linode/openapi/openapi-ip-sharing.yaml`).
//!
//! Each operation's response schema is turned into a self-contained JSON Schema
//! (draft 2020-12) and compiled with the `jsonschema` crate:
//! - `$ref`s are inlined (including pointers into properties such as
//!   `#/components/schemas/PaginationEnvelope/properties/page`);
//! - `nullable: true` becomes `anyOf: [schema, {type: null}]`, which is also right for
//!   `nullable` next to `allOf` (`Linode.image`);
//! - a `writeOnly` property must not appear in a response (becomes the `false` schema);
//!   `readOnly`, `example`, `x-*` and other annotations are dropped;
//! - formats are checked: `ip`, `ipv4`, `ipv6`, `ipv6/128`, `ipv6/prefix_length`, `uuid`, and
//!   `date-time` in Linode's form (`2018-01-01T00:01:01`, no offset, as the spec's examples
//!   and the real API) as well as RFC 3339;
//! - with [`Strictness::Strict`], objects accept only their documented properties
//!   (`unevaluatedProperties: false`), so a misspelt or invented field fails.
//!
//! Known defects of the spec are corrected explicitly in [`SPEC_CORRECTIONS`].

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Errors of loading the spec or building a validator.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read OpenAPI spec {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spec file is not YAML.
    #[error("OpenAPI spec {path} is not valid YAML: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// No such operation or response in the spec.
    #[error("the spec has no {what}")]
    Missing {
        /// What was looked for.
        what: String,
    },
    /// A `$ref` that does not resolve, or refers to itself.
    #[error("cannot resolve $ref {reference}: {why}")]
    Ref {
        /// The reference.
        reference: String,
        /// Why.
        why: &'static str,
    },
    /// The converted schema did not compile.
    #[error("converted schema for {what} does not compile: {message}")]
    Compile {
        /// Which schema.
        what: String,
        /// The compiler's message.
        message: String,
    },
}

/// How strictly objects are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// As the spec says: undocumented properties are allowed.
    AsSpecified,
    /// Only documented properties are allowed.
    Strict,
}

/// A correction to a known defect in the spec: the JSON pointer of a schema and the
/// keyword removed from it, with the reason.
pub struct SpecCorrection {
    /// JSON pointer into the spec document.
    pub pointer: &'static str,
    /// Keyword removed there.
    pub drop_keyword: &'static str,
    /// Why.
    pub why: &'static str,
}

/// The corrections applied before conversion.
pub const SPEC_CORRECTIONS: &[SpecCorrection] = &[SpecCorrection {
    pointer: "/components/schemas/Linode/properties/label",
    drop_keyword: "pattern",
    why: "'^[a-zA-Z]((?!--|__|..)[a-zA-Z0-9-_.])+$' has an unescaped '..' in its lookahead, so it \
          matches only 2-character labels and, with minLength 3, no label at all (not even the \
          spec's own example 'linode123')",
}];

/// A loaded OpenAPI document.
#[derive(Clone, Debug)]
pub struct OpenApiSpec {
    doc: Value,
    raw: Value,
}

/// Which response of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseKind {
    /// The `200` response.
    Ok,
    /// The `default` response (errors).
    Default,
}

impl OpenApiSpec {
    /// Loads a YAML (or JSON) OpenAPI document.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: Value = serde_yaml::from_str(&text).map_err(|source| SpecError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut doc = raw.clone();
        for c in SPEC_CORRECTIONS {
            if let Some(Value::Object(o)) = doc.pointer_mut(c.pointer) {
                o.remove(c.drop_keyword);
            }
        }
        Ok(Self { doc, raw })
    }

    /// The document with corrections applied.
    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// The document as loaded.
    pub fn raw_document(&self) -> &Value {
        &self.raw
    }

    /// `(METHOD, path)` of every operation, e.g. `("POST", "/networking/ips/share")`.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(paths) = self.doc.get("paths").and_then(Value::as_object) {
            for (p, item) in paths {
                for m in ["get", "put", "post", "delete", "patch"] {
                    if item.get(m).is_some() {
                        out.push((m.to_ascii_uppercase(), p.clone()));
                    }
                }
            }
        }
        out
    }

    /// The raw (OpenAPI) response schema of an operation.
    pub fn response_schema(
        &self,
        method: &str,
        path: &str,
        kind: ResponseKind,
    ) -> Result<Value, SpecError> {
        let op = self
            .doc
            .get("paths")
            .and_then(|p| p.get(path))
            .and_then(|i| i.get(method.to_ascii_lowercase()))
            .ok_or_else(|| SpecError::Missing {
                what: format!("operation {method} {path}"),
            })?;
        let key = match kind {
            ResponseKind::Ok => "200",
            ResponseKind::Default => "default",
        };
        let mut resp = op
            .get("responses")
            .and_then(|r| r.get(key))
            .ok_or_else(|| SpecError::Missing {
                what: format!("{key} response for {method} {path}"),
            })?;
        // Response objects themselves may be $refs (`#/components/responses/ErrorResponse`).
        let mut seen = 0;
        while let Some(r) = resp.get("$ref").and_then(Value::as_str) {
            resp = self.resolve(r)?;
            seen += 1;
            if seen > 8 {
                return Err(SpecError::Ref {
                    reference: r.to_owned(),
                    why: "too many indirections",
                });
            }
        }
        resp.pointer("/content/application~1json/schema")
            .cloned()
            .ok_or_else(|| SpecError::Missing {
                what: format!("application/json schema of {key} response for {method} {path}"),
            })
    }

    /// A validator for the response of `method path` with `status` (200 → the `200`
    /// response, anything else → `default`).
    pub fn response_validator(
        &self,
        method: &str,
        path: &str,
        status: u16,
        strictness: Strictness,
    ) -> Result<BodyValidator, SpecError> {
        let kind = if status == 200 {
            ResponseKind::Ok
        } else {
            ResponseKind::Default
        };
        let schema = self.response_schema(method, path, kind)?;
        self.validator_for(&schema, &format!("{method} {path} {status}"), strictness)
    }

    /// A validator for a component schema, e.g. `#/components/schemas/Linode`.
    pub fn component_validator(
        &self,
        reference: &str,
        strictness: Strictness,
    ) -> Result<BodyValidator, SpecError> {
        self.validator_for(&json!({"$ref": reference}), reference, strictness)
    }

    fn validator_for(
        &self,
        schema: &Value,
        what: &str,
        strictness: Strictness,
    ) -> Result<BodyValidator, SpecError> {
        let mut converted = self.convert(schema, &mut Vec::new(), strictness, false)?;
        if let Value::Object(o) = &mut converted {
            o.insert(
                "$schema".into(),
                json!("https://json-schema.org/draft/2020-12/schema"),
            );
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .should_ignore_unknown_formats(false)
            .with_format("ip", |s: &str| s.parse::<IpAddr>().is_ok())
            .with_format("ipv6/128", |s: &str| {
                s.strip_suffix("/128")
                    .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok())
            })
            .with_format("ipv6/prefix_length", |s: &str| {
                s.split_once('/').is_some_and(|(a, l)| {
                    a.parse::<Ipv6Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128)
                })
            })
            .with_format("ipv4|ipv6/prefix_length", |s: &str| {
                s.parse::<IpAddr>().is_ok()
                    || s.split_once('/').is_some_and(|(a, l)| {
                        a.parse::<Ipv6Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128)
                    })
            })
            .with_format("date-time", linode_date_time)
            .with_format("password", |_: &str| true)
            .build(&converted)
            .map_err(|e| SpecError::Compile {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
        Ok(BodyValidator {
            what: what.to_owned(),
            schema: converted,
            validator,
        })
    }

    fn resolve(&self, reference: &str) -> Result<&Value, SpecError> {
        let pointer = reference.strip_prefix('#').ok_or_else(|| SpecError::Ref {
            reference: reference.to_owned(),
            why: "only local references are supported",
        })?;
        self.doc.pointer(pointer).ok_or_else(|| SpecError::Ref {
            reference: reference.to_owned(),
            why: "no such location in the spec",
        })
    }

    /// OpenAPI 3.0 schema → JSON Schema 2020-12 (see the module docs).
    fn convert(
        &self,
        node: &Value,
        stack: &mut Vec<String>,
        strictness: Strictness,
        in_all_of: bool,
    ) -> Result<Value, SpecError> {
        let Value::Object(obj) = node else {
            return Ok(node.clone());
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            if stack.iter().any(|s| s == r) {
                return Err(SpecError::Ref {
                    reference: r.to_owned(),
                    why: "recursive schemas are not supported",
                });
            }
            let target = self.resolve(r)?.clone();
            stack.push(r.to_owned());
            // OpenAPI 3.0 ignores siblings of $ref.
            let out = self.convert(&target, stack, strictness, in_all_of);
            stack.pop();
            return out;
        }
        let mut out = Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "nullable" | "readOnly" | "writeOnly" | "example" | "examples" | "deprecated"
                | "discriminator" | "xml" | "externalDocs" | "description" | "title" => {}
                k if k.starts_with("x-") => {}
                "properties" => {
                    let mut props = Map::new();
                    if let Value::Object(p) = v {
                        for (name, s) in p {
                            let write_only =
                                s.get("writeOnly").and_then(Value::as_bool) == Some(true);
                            let conv = if write_only {
                                Value::Bool(false)
                            } else {
                                self.convert(s, stack, strictness, false)?
                            };
                            props.insert(name.clone(), conv);
                        }
                    }
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" | "not" | "additionalProperties" => {
                    out.insert(k.clone(), self.convert(v, stack, strictness, false)?);
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let subs = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|s| self.convert(s, stack, strictness, k == "allOf"))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .transpose()?
                        .unwrap_or_default();
                    out.insert(k.clone(), Value::Array(subs));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        // `required` placed on an array schema (IPAddressesAssignRequest) is harmless: it
        // only applies to objects.
        let is_object_schema = out.contains_key("properties") || out.contains_key("allOf");
        if strictness == Strictness::Strict && is_object_schema && !in_all_of {
            out.insert("unevaluatedProperties".into(), Value::Bool(false));
        }
        let converted = Value::Object(out);
        if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
            Ok(json!({"anyOf": [converted, {"type": "null"}]}))
        } else {
            Ok(converted)
        }
    }
}

/// Linode's timestamps: `YYYY-MM-DDTHH:MM:SS` (no offset), or RFC 3339.
fn linode_date_time(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_ok()
        || chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// A compiled response schema.
pub struct BodyValidator {
    what: String,
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for BodyValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyValidator")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl BodyValidator {
    /// Every violation, as `path: message` lines (empty when valid).
    pub fn errors(&self, body: &Value) -> Vec<String> {
        self.validator
            .iter_errors(body)
            .map(|e| format!("{}: {}", e.instance_path(), e))
            .collect()
    }

    /// Ok, or an error naming the schema, the violations and the body.
    pub fn check(&self, body: &Value) -> Result<(), String> {
        let errors = self.errors(body);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "body does not match the schema of {}:\n  {}\nbody: {}",
                self.what,
                errors.join("\n  "),
                body
            ))
        }
    }

    /// The converted JSON Schema.
    pub fn json_schema(&self) -> &Value {
        &self.schema
    }
}
