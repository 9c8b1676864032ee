//! A little PromQL, read by hand: enough to find the metrics, labels and groupings that a
//! query of the dashboard or of the alert rules names, so that the deployment tests can check
//! them against what a real node exports (`deploy` area).
//!
//! It is not a parser of the language: it scans the text for metric names by prefix (`tally_`,
//! `process_`, `pg_`, `haproxy_`), their `{...}` matchers, `by (...)` clauses and
//! `label_replace` calls, which is what the queries of `deploy/` are made of. A matcher it cannot read (an unclosed brace, an unquoted value)
//! panics; other constructs (`without`, `on`, `ignoring`) are skipped, not checked. The
//! matcher reader also reads the labels of a `/metrics` exposition, written the same way.

use std::collections::BTreeSet;

/// A selector of a metric in a query: `tally_x{label op "value", ...}`.
#[derive(Debug)]
pub struct Selector {
    pub metric: String,
    /// `(label, operator, value)`, the value unquoted.
    pub matchers: Vec<(String, String, String)>,
}

/// A character of a metric or label name (`:` for recording rules).
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The prefixes of the metrics a Tally node exports: its own, and the process metrics.
pub const NODE_METRICS: &[&str] = &["tally_", "process_"];

/// Every selector in `expr` of a metric a Tally node exports ([`NODE_METRICS`]).
pub fn tally_selectors(expr: &str) -> Vec<Selector> {
    selectors(expr, NODE_METRICS)
}

/// Every selector in `expr` of a metric whose name starts with one of `prefixes`.
pub fn selectors(expr: &str, prefixes: &[&str]) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut i = 0;
    let next = |from: usize| {
        prefixes
            .iter()
            .filter_map(|p| expr[from..].find(p).map(|at| at + from))
            .min()
    };
    while let Some(at) = next(i) {
        let starts_word = expr[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        let end = expr[at..]
            .find(|c| !is_ident(c))
            .map_or(expr.len(), |p| p + at);
        if starts_word {
            let rest = expr[end..].trim_start();
            let matchers = if rest.starts_with('{') {
                parse_matchers(&read_braces(rest).0)
            } else {
                Vec::new()
            };
            found.push(Selector {
                metric: expr[at..end].to_owned(),
                matchers,
            });
        }
        i = end;
    }
    found
}

/// The text inside the braces `s` starts with, quotes honoured, and the rest after them.
pub fn read_braces(s: &str) -> (String, &str) {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '}' if !in_quote => return (s[1..i].to_owned(), &s[i + 1..]),
            _ => {}
        }
    }
    panic!("unclosed braces in `{s}`")
}

/// `label op "value"` matchers, separated by commas.
pub fn parse_matchers(block: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = block.trim();
    while !rest.is_empty() {
        let name_end = rest.find(|c: char| !is_ident(c)).expect("a label name");
        let name = rest[..name_end].to_owned();
        let after = rest[name_end..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| after.starts_with(op))
            .unwrap_or_else(|| panic!("no operator after `{name}` in `{block}`"));
        let quoted = after[op.len()..].trim_start();
        assert!(quoted.starts_with('"'), "unquoted value in `{block}`");
        let mut value = String::new();
        let mut chars = quoted.char_indices().skip(1);
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => value.push(chars.next().unwrap().1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((name, op.to_owned(), value));
        rest = quoted[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// The labels named in `by (...)` clauses.
pub fn grouping_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("by").map(|p| p + i) {
        let word = expr[..at].chars().next_back().is_none_or(|c| !is_ident(c))
            && expr[at + 2..].chars().next().is_none_or(|c| !is_ident(c));
        let rest = expr[at + 2..].trim_start();
        if word && rest.starts_with('(') {
            let inside = &rest[1..rest.find(')').unwrap()];
            labels.extend(
                inside
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
        i = at + 2;
    }
    labels
}

/// The labels that `label_replace(v, "dst", ...)` calls create.
pub fn label_replace_targets(expr: &str) -> BTreeSet<String> {
    let mut made = BTreeSet::new();
    for (at, _) in expr.match_indices("label_replace(") {
        // The destination is the first quoted string after the vector argument.
        let mut depth = 0;
        for (i, c) in expr[at + "label_replace(".len()..].char_indices() {
            match c {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    let rest = &expr[at + "label_replace(".len() + i + 1..];
                    let rest = rest.trim_start().strip_prefix('"').unwrap();
                    made.insert(rest[..rest.find('"').unwrap()].to_owned());
                    break;
                }
                _ => {}
            }
        }
    }
    made
}

/// The value of `label` in a series selector such as `m{a="x", instance="tally-1"}`.
pub fn label_value(series: &str, label: &str) -> Option<String> {
    let (_, rest) = series.split_once('{')?;
    let (block, _) = read_braces(&format!("{{{rest}"));
    parse_matchers(&block)
        .into_iter()
        .find(|(l, _, _)| l == label)
        .map(|(_, _, v)| v)
}
