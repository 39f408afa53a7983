//! The spec as a tree of values that remember where they were written, so validation
//! can walk it once, report every problem, and point each one at its line and column.
//!
//! JSON is a subset of YAML's flow syntax, so both formats go through serde-saphyr and
//! both get locations. JSON that saphyr rejects (tabs used for indentation, for
//! example) falls back to serde_json, whose values carry no location.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in the spec text. `line == 0` means unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    pub line: u32,
    pub col: u32,
}

impl Loc {
    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in written order; duplicates are rejected by the parser.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub loc: Loc,
}

impl Node {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: s.value,
            loc: Loc {
                line: s.referenced.line() as u32,
                col: s.referenced.column() as u32,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            out.push(n);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            out.push((k, v));
        }
        Ok(Value::Map(out))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not allowed in a job spec"))
    }
}

/// A syntax error: the text is not YAML (or JSON) at all.
#[derive(Clone, Debug)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

/// Parses YAML (or JSON, which is YAML) into a located tree.
pub fn parse_yaml(text: &str) -> Result<Node, SyntaxError> {
    match serde_saphyr::from_str::<Node>(text) {
        Ok(n) => Ok(n),
        Err(e) => {
            let loc = e
                .location()
                .map(|l| Loc {
                    line: l.line() as u32,
                    col: l.column() as u32,
                })
                .unwrap_or_default();
            // The rendered error repeats the snippet over several lines; the first line
            // is the cause.
            let full = e.to_string();
            let message = full
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid YAML")
                .trim()
                .trim_start_matches("error: ");
            // The location is reported separately; drop saphyr's own copy of it.
            let message = match message.split_once(": ") {
                Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => {
                    rest
                }
                _ => message,
            }
            .to_owned();
            Err(SyntaxError { loc, message })
        }
    }
}

/// Parses JSON, through saphyr for locations, else through serde_json.
pub fn parse_json(text: &str) -> Result<Node, SyntaxError> {
    if let Ok(n) = parse_yaml(text) {
        return Ok(n);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => Ok(from_json(v)),
        Err(e) => Err(SyntaxError {
            loc: Loc {
                line: e.line() as u32,
                col: e.column() as u32,
            },
            message: e.to_string(),
        }),
    }
}

fn from_json(v: serde_json::Value) -> Node {
    use serde_json::Value as J;
    let value = match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s),
        J::Array(a) => Value::Seq(a.into_iter().map(from_json).collect()),
        J::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| {
                    (
                        Node {
                            value: Value::Str(k),
                            loc: Loc::default(),
                        },
                        from_json(v),
                    )
                })
                .collect(),
        ),
    };
    Node {
        value,
        loc: Loc::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_keep_locations() {
        let n = parse_yaml("a: 1\nb:\n  - x\n  - {c: 2.5}\n").unwrap();
        let Value::Map(m) = &n.value else {
            panic!("{n:?}")
        };
        assert_eq!(m[0].0.as_str(), Some("a"));
        assert_eq!(m[0].1.value, Value::Int(1));
        let Value::Seq(s) = &m[1].1.value else {
            panic!()
        };
        assert_eq!(s[0].loc.line, 3);
        assert_eq!(s[1].loc.line, 4);
        let Value::Map(inner) = &s[1].value else {
            panic!()
        };
        assert_eq!(inner[0].1.value, Value::Float(2.5));
        assert_eq!(inner[0].1.loc, Loc { line: 4, col: 9 });
    }

    #[test]
    fn json_gets_locations_too() {
        let n = parse_json("{\n  \"a\": [1,\n  \"x\"]\n}").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        let Value::Seq(s) = &m[0].1.value else {
            panic!()
        };
        assert_eq!(s[1].loc.line, 3);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let e = parse_yaml("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.loc.is_known(), "{e:?}");
        let e = parse_yaml("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains('a'), "{e:?}");
    }
}
