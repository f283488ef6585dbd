//! A resource's document, read field by field with each field marked as
//! it is read, so that whatever no mapping read is found afterwards and
//! reported: nothing is dropped without a word.

use crate::config::{Node, Value};
use std::cell::Cell;

/// A value of the document, its line, its path from the resource's root
/// (`spec.http[0].route`), and whether a mapping has read it.
#[derive(Debug)]
pub(crate) struct T {
    value: V,
    line: u32,
    path: String,
    read: Cell<bool>,
}

#[derive(Debug)]
enum V {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<T>),
    Map(Vec<(String, T)>),
}

/// A field no mapping read: its path, line, and what it held.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unread {
    pub(crate) path: String,
    pub(crate) line: Option<u32>,
}

impl T {
    /// The tree of `node`, its root at `path`.
    pub(crate) fn new(node: &Node, path: &str) -> T {
        let value = match &node.value {
            Value::Null => V::Null,
            Value::Bool(b) => V::Bool(*b),
            Value::Int(i) => V::Int(*i),
            Value::Float(f) => V::Float(*f),
            Value::Str(s) => V::Str(s.clone()),
            Value::Seq(items) => V::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| T::new(n, &format!("{path}[{i}]")))
                    .collect(),
            ),
            Value::Map(entries) => V::Map(
                entries
                    .iter()
                    .map(|(k, n)| {
                        let p = if path.is_empty() {
                            k.name.clone()
                        } else {
                            format!("{path}.{}", k.name)
                        };
                        (k.name.clone(), T::new(n, &p))
                    })
                    .collect(),
            ),
        };
        T {
            value,
            line: node.line,
            path: path.to_owned(),
            read: Cell::new(false),
        }
    }

    /// The path from the resource's root.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The line it starts on, if known.
    pub(crate) fn line(&self) -> Option<u32> {
        (self.line > 0).then_some(self.line)
    }

    /// Marks it read, whole (its fields too).
    pub(crate) fn consume(&self) {
        self.read.set(true);
        match &self.value {
            V::Seq(items) => items.iter().for_each(T::consume),
            V::Map(entries) => entries.iter().for_each(|(_, t)| t.consume()),
            _ => {}
        }
    }

    /// Marks the fields `keys` of a mapping read, whole: they configure
    /// nothing here.
    pub(crate) fn consume_fields(&self, keys: &[&str]) {
        for k in keys {
            if let Some(t) = self.get(k) {
                t.consume();
            }
        }
    }

    /// The field `key` of a mapping (marked read), if present and not null.
    pub(crate) fn get(&self, key: &str) -> Option<&T> {
        let V::Map(entries) = &self.value else {
            return None;
        };
        self.read.set(true);
        let (_, t) = entries.iter().find(|(k, _)| k == key)?;
        t.read.set(true);
        (!matches!(t.value, V::Null)).then_some(t)
    }

    /// The field `key` of a mapping, without marking it read (to look
    /// before deciding who reads it).
    pub(crate) fn peek(&self, key: &str) -> Option<&T> {
        let V::Map(entries) = &self.value else {
            return None;
        };
        entries
            .iter()
            .find(|(k, t)| k == key && !matches!(t.value, V::Null))
            .map(|(_, t)| t)
    }

    /// Its fields (a mapping's), each marked read.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &T)> {
        self.read.set(true);
        let entries: &[(String, T)] = match &self.value {
            V::Map(e) => e,
            _ => &[],
        };
        entries.iter().map(|(k, t)| {
            t.read.set(true);
            (k.as_str(), t)
        })
    }

    /// Its items (a list's), each marked read; a single value stands for
    /// a list of one.
    pub(crate) fn items(&self) -> Vec<&T> {
        self.read.set(true);
        match &self.value {
            V::Seq(items) => items.iter().inspect(|t| t.read.set(true)).collect(),
            V::Null => Vec::new(),
            _ => vec![self],
        }
    }

    /// Its items (a list's), not marked read.
    pub(crate) fn items_unread(&self) -> Vec<&T> {
        match &self.value {
            V::Seq(items) => items.iter().collect(),
            V::Null => Vec::new(),
            _ => vec![self],
        }
    }

    /// As text, not marked read.
    pub(crate) fn peek_text(&self) -> Option<String> {
        match &self.value {
            V::Str(s) => Some(s.clone()),
            V::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// As text (strings, numbers and booleans written as text), marked
    /// read.
    pub(crate) fn text(&self) -> Option<String> {
        self.read.set(true);
        match &self.value {
            V::Str(s) => Some(s.clone()),
            V::Int(i) => Some(i.to_string()),
            V::Float(f) => Some(f.to_string()),
            V::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// As a number, marked read (text holding a number counts).
    pub(crate) fn number(&self) -> Option<f64> {
        self.read.set(true);
        match &self.value {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            V::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// As a non-negative integer that fits a `u32`, marked read.
    pub(crate) fn u32(&self) -> Option<u32> {
        self.number()
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
            .map(|n| n as u32)
    }

    /// As a boolean, marked read.
    pub(crate) fn bool(&self) -> Option<bool> {
        self.read.set(true);
        match &self.value {
            V::Bool(b) => Some(*b),
            V::Str(s) if s == "true" => Some(true),
            V::Str(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// Whether it is a mapping.
    pub(crate) fn is_map(&self) -> bool {
        matches!(self.value, V::Map(_))
    }

    /// Whether it is empty: null, an empty mapping or an empty list.
    pub(crate) fn is_empty(&self) -> bool {
        match &self.value {
            V::Null => true,
            V::Map(e) => e.is_empty(),
            V::Seq(s) => s.is_empty(),
            _ => false,
        }
    }

    /// Every field no mapping read, at the outermost level (a section no
    /// one read is one entry, not one per field in it). Empty values and
    /// nulls are not reported: they configure nothing.
    pub(crate) fn unread(&self) -> Vec<Unread> {
        let mut out = Vec::new();
        self.collect_unread(&mut out);
        out
    }

    fn collect_unread(&self, out: &mut Vec<Unread>) {
        if !self.read.get() {
            if !self.is_empty() {
                out.push(Unread {
                    path: self.path.clone(),
                    line: self.line(),
                });
            }
            return;
        }
        match &self.value {
            V::Seq(items) => items.iter().for_each(|t| t.collect_unread(out)),
            V::Map(entries) => entries.iter().for_each(|(_, t)| t.collect_unread(out)),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> T {
        let docs = crate::config::parse_documents(yaml).unwrap();
        T::new(&docs[0], "")
    }

    #[test]
    fn finds_what_no_one_read_at_its_outermost_path() {
        let t = tree(
            "spec:\n  hosts: [a]\n  http:\n    - route: [{ destination: { host: a } }]\n      fault: { abort: { httpStatus: 503 } }\n  gateways: []\nstatus: null\n",
        );
        let spec = t.get("spec").unwrap();
        assert_eq!(spec.get("hosts").unwrap().items()[0].text().unwrap(), "a");
        let http = spec.get("http").unwrap().items();
        let route = http[0].get("route").unwrap().items();
        let dest = route[0].get("destination").unwrap();
        assert_eq!(dest.get("host").unwrap().text().unwrap(), "a");
        let unread = t.unread();
        assert_eq!(unread.len(), 1, "{unread:?}");
        assert_eq!(unread[0].path, "spec.http[0].fault");
        assert_eq!(unread[0].line, Some(5));
        // An empty list is not reported: it configures nothing.
        assert_eq!(spec.peek("gateways").map(T::is_empty), Some(true));
    }
}
