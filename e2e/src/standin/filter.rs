//! Linode's `X-Filter` header: a JSON object of field conditions combined with
//! `+and` / `+or`, operators `+neq`, `+contains`, `+gt`, `+gte`, `+lt`, `+lte`, and
//! ordering with `+order_by` / `+order`. Only fields the spec marks
//! `x-linode-filterable` may be used; anything else is a 400 on field `X-Filter`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::error::ApiError;

const FIELD: &str = "X-Filter";

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::bad_request(reason, FIELD)
}

#[derive(Clone, Debug)]
enum Op {
    Eq,
    Neq,
    Contains,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Clone, Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cond { field: String, op: Op, value: Value },
}

/// A parsed `X-Filter`.
#[derive(Clone, Debug)]
pub struct Filter {
    expr: Expr,
    order_by: Option<String>,
    descending: bool,
}

impl Filter {
    /// Parses the header value, allowing conditions on `filterable` fields only.
    pub fn parse(header: &str, filterable: &[&str]) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_str(header)
            .map_err(|_| bad("X-Filter must be a valid JSON object"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("X-Filter must be a JSON object"))?;
        let mut order_by = None;
        let mut descending = false;
        let mut rest = Map::new();
        for (k, val) in obj {
            match k.as_str() {
                "+order_by" => {
                    let f = val
                        .as_str()
                        .ok_or_else(|| bad("+order_by must be a field name"))?;
                    if !filterable.contains(&f) {
                        return Err(bad(format!("Cannot order by {f}")));
                    }
                    order_by = Some(f.to_owned());
                }
                "+order" => {
                    descending = match val.as_str() {
                        Some("asc") => false,
                        Some("desc") => true,
                        _ => return Err(bad("+order must be 'asc' or 'desc'")),
                    }
                }
                _ => {
                    rest.insert(k.clone(), val.clone());
                }
            }
        }
        let expr = parse_object(&rest, filterable)?;
        Ok(Self {
            expr,
            order_by,
            descending,
        })
    }

    /// Keeps the items that match, then orders them if asked.
    pub fn apply(&self, items: Vec<Value>) -> Vec<Value> {
        let mut out: Vec<Value> = items.into_iter().filter(|i| eval(&self.expr, i)).collect();
        if let Some(f) = &self.order_by {
            out.sort_by(|a, b| {
                let o = compare(
                    a.get(f).unwrap_or(&Value::Null),
                    b.get(f).unwrap_or(&Value::Null),
                )
                .unwrap_or(Ordering::Equal);
                if self.descending {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        out
    }
}

fn parse_object(obj: &Map<String, Value>, filterable: &[&str]) -> Result<Expr, ApiError> {
    let mut all = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            "+and" | "+or" => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| bad(format!("{k} must be a list of filter objects")))?;
                let subs = arr
                    .iter()
                    .map(|s| {
                        s.as_object()
                            .ok_or_else(|| bad(format!("{k} must be a list of filter objects")))
                            .and_then(|o| parse_object(o, filterable))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                all.push(if k == "+and" {
                    Expr::And(subs)
                } else {
                    Expr::Or(subs)
                });
            }
            key if key.starts_with('+') => {
                return Err(bad(format!("Unknown filter operator {key}")))
            }
            field => {
                if !filterable.contains(&field) {
                    return Err(bad(format!("Cannot filter on {field}")));
                }
                all.push(parse_condition(field, v)?);
            }
        }
    }
    Ok(Expr::And(all))
}

fn parse_condition(field: &str, v: &Value) -> Result<Expr, ApiError> {
    let cond = |op, value: &Value| Expr::Cond {
        field: field.to_owned(),
        op,
        value: value.clone(),
    };
    match v {
        Value::Object(o) => {
            let mut parts = Vec::new();
            for (op, val) in o {
                let op = match op.as_str() {
                    "+neq" => Op::Neq,
                    "+contains" => Op::Contains,
                    "+gt" => Op::Gt,
                    "+gte" => Op::Gte,
                    "+lt" => Op::Lt,
                    "+lte" => Op::Lte,
                    other => return Err(bad(format!("Unknown filter operator {other}"))),
                };
                if matches!(val, Value::Object(_) | Value::Array(_)) {
                    return Err(bad(format!("Invalid value for {field}")));
                }
                parts.push(cond(op, val));
            }
            Ok(Expr::And(parts))
        }
        Value::Array(_) => Err(bad(format!("Invalid value for {field}"))),
        scalar => Ok(cond(Op::Eq, scalar)),
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    compare(a, b) == Some(Ordering::Equal)
}

fn eval(e: &Expr, item: &Value) -> bool {
    match e {
        Expr::And(v) => v.iter().all(|s| eval(s, item)),
        Expr::Or(v) => v.iter().any(|s| eval(s, item)),
        Expr::Cond { field, op, value } => {
            let actual = item.get(field).unwrap_or(&Value::Null);
            match (op, actual) {
                // Array fields (tags, ipv4) match when any element matches.
                (Op::Eq, Value::Array(a)) => a.iter().any(|x| scalar_eq(x, value)),
                (Op::Neq, Value::Array(a)) => !a.iter().any(|x| scalar_eq(x, value)),
                (Op::Contains, Value::Array(a)) => a.iter().any(|x| match (x, value) {
                    (Value::String(s), Value::String(n)) => s.contains(n.as_str()),
                    _ => scalar_eq(x, value),
                }),
                (Op::Eq, a) => scalar_eq(a, value),
                (Op::Neq, a) => !scalar_eq(a, value),
                (Op::Contains, Value::String(s)) => value.as_str().is_some_and(|n| s.contains(n)),
                (Op::Contains, _) => false,
                (Op::Gt, a) => compare(a, value) == Some(Ordering::Greater),
                (Op::Gte, a) => {
                    matches!(compare(a, value), Some(Ordering::Greater | Ordering::Equal))
                }
                (Op::Lt, a) => compare(a, value) == Some(Ordering::Less),
                (Op::Lte, a) => matches!(compare(a, value), Some(Ordering::Less | Ordering::Equal)),
            }
        }
    }
}
