//! The server half of RESP2, Redis's wire protocol: parsing requests, encoding replies.
//!
//! Clients send a command as an array of bulk strings (`*2\r\n$4\r\nPING\r\n...`), or, typed by
//! hand (telnet, `nc`), as one "inline" line of space-separated words. Replies are one of five
//! types. The `redis` crate already speaks the client half (the CLI uses it); a server needs only
//! this much, with limits, so it is written here rather than pulled in from a framework crate.
//!
//! Requests are parsed incrementally by [`RequestParser`] (in `request`); replies and Redis's
//! glob matching for `PSUBSCRIBE` are here.

mod request;
#[cfg(test)]
mod request_tests;

use std::fmt;

pub use request::{
    MAX_INLINE_LEN, ProtocolError, Request, RequestLimits, RequestParser, parse_request,
};

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status line (no CR or LF).
    Simple(String),
    /// `-ERR message`: the first word is the error code (`ERR`, `NOGOODSLAVE`, ...).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// `$-1`: nothing (a missing value).
    Null,
    Array(Vec<Reply>),
    /// `*-1`: no array (what `SENTINEL get-master-addr-by-name` answers for an unknown name).
    NullArray,
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK".into())
    }

    /// An error reply with Redis's generic `ERR` code.
    pub fn err(message: impl fmt::Display) -> Self {
        Reply::Error(format!("ERR {message}"))
    }

    pub fn bulk(text: impl Into<String>) -> Self {
        Reply::Bulk(text.into().into_bytes())
    }

    /// A flat array of field/value bulk strings, as Sentinel describes an instance.
    pub fn fields<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Reply::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [Reply::bulk(k), Reply::bulk(v)])
                .collect(),
        )
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line_reply(out, b'+', s),
            Reply::Error(s) => line_reply(out, b'-', s),
            Reply::Integer(n) => {
                out.push(b':');
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                out.push(b'$');
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.push(b'*');
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// A status or error line: CR and LF would end it early, so they become spaces.
fn line_reply(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Redis's glob matching for `PSUBSCRIBE` patterns (`stringmatchlen`): `*`, `?`, `[abc]`,
/// `[^a-z]`, and `\` to escape. Iterative, so a hostile pattern cannot overflow the stack.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((after_star, matched_to))) => {
                // Let the last `*` swallow one more character and retry.
                p = after_star;
                t = matched_to + 1;
                star = Some((after_star, matched_to + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == b'['`; returns the index after
/// the class when it matches. An unterminated class extends to the end of the pattern, as in
/// Redis.
fn class_match(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = if pattern[i] <= pattern[i + 2] {
                (pattern[i], pattern[i + 2])
            } else {
                (pattern[i + 2], pattern[i])
            };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    let end = (i + 1).min(pattern.len());
    (matched != negate).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_reply_type() {
        let reply = Reply::Array(vec![
            Reply::ok(),
            Reply::err("unknown command 'x'"),
            Reply::Integer(-3),
            Reply::bulk("198.18.1.11"),
            Reply::Null,
            Reply::NullArray,
            Reply::Array(vec![]),
            Reply::Simple("two\r\nlines".into()),
        ]);
        assert_eq!(
            String::from_utf8(reply.to_bytes()).unwrap(),
            "*8\r\n+OK\r\n-ERR unknown command 'x'\r\n:-3\r\n$11\r\n198.18.1.11\r\n$-1\r\n*-1\r\n*0\r\n+two  lines\r\n"
        );
    }

    #[test]
    fn encoded_replies_parse_with_the_redis_crate() {
        let reply = Reply::Array(vec![
            Reply::fields([("name", "mymaster"), ("port", "6379")]),
            Reply::Integer(7),
        ]);
        let value = redis::parse_redis_value(&reply.to_bytes()).unwrap();
        let (fields, n): (Vec<String>, i64) = redis::from_redis_value(&value).unwrap();
        assert_eq!(fields, ["name", "mymaster", "port", "6379"]);
        assert_eq!(n, 7);
    }

    #[test]
    fn glob_matches_like_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "+switch-master", true),
            ("*", "", true),
            ("+*", "+sdown", true),
            ("+*", "-sdown", false),
            ("?sdown", "-sdown", true),
            ("[+-]sdown", "+sdown", true),
            ("[^+]sdown", "+sdown", false),
            ("[a-c]x", "bx", true),
            ("[c-a]x", "bx", true),
            ("*master", "+switch-master", true),
            ("*switch*", "+switch-master", true),
            ("+sw*er", "+switch-master", true),
            ("+sw*ex", "+switch-master", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("[abc", "b", true),
            ("", "", true),
            ("", "a", false),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern:?} ~ {text:?}"
            );
        }
        // Pathological pattern: linear-ish, no recursion.
        let pattern = "*a".repeat(200);
        assert!(!glob_match(
            pattern.as_bytes(),
            "b".repeat(5_000).as_bytes()
        ));
    }
}
