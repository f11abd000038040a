//! The server half of RESP2 and RESP3, Redis's wire protocols: parsing requests, encoding replies.
//!
//! Clients send a command as an array of bulk strings (`*2\r\n$4\r\nPING\r\n...`), or, typed by
//! hand (telnet, `nc`), as one "inline" line of space-separated words. A [`Reply`] is built once
//! and encoded in the protocol the connection chose (`HELLO 2|3`). The `redis` crate already speaks the client half (the CLI uses it); a server needs only
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

/// The protocol a connection speaks: RESP2 until the client asks for RESP3 with `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    /// `HELLO`'s protocol version.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A reply, built once and encoded in either protocol: the RESP3-only types fall back to what
/// Redis sends a RESP2 client in their place, so one builder serves both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status line (no CR or LF).
    Simple(String),
    /// `-ERR message`: the first word is the error code (`ERR`, `NOGOODSLAVE`, ...).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    Array(Vec<Reply>),
    /// No array (what `SENTINEL get-master-addr-by-name` answers for an unknown name): `*-1` in
    /// RESP2, `_` in RESP3.
    NullArray,
    /// Key/value pairs: `%` in RESP3, a flat array of keys and values in RESP2 (Redis's
    /// `addReplyMapLen`).
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages and confirmations): `>` in RESP3, so a client can
    /// tell it from a reply; an array in RESP2.
    Push(Vec<Reply>),
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

    /// Field/value bulk strings, as Sentinel describes an instance: a map in RESP3.
    pub fn fields<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                .collect(),
        )
    }

    /// Appends the wire form in `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Simple(s) => line_reply(out, b'+', s),
            Reply::Error(s) => line_reply(out, b'-', s),
            Reply::Integer(n) => header(out, b':', *n),
            Reply::Bulk(b) => {
                header(out, b'$', b.len());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null | Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, proto),
            Reply::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', 2 * pairs.len());
                }
                for (key, value) in pairs {
                    key.encode(proto, out);
                    value.encode(proto, out);
                }
            }
        }
    }

    /// The RESP2 wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_in(Protocol::Resp2)
    }

    pub fn to_bytes_in(&self, proto: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }
}

/// A type byte, a length or number, CRLF.
fn header(out: &mut Vec<u8>, kind: u8, n: impl fmt::Display) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn aggregate(out: &mut Vec<u8>, kind: u8, items: &[Reply], proto: Protocol) {
    header(out, kind, items.len());
    for item in items {
        item.encode(proto, out);
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
    fn resp3_types_fall_back_to_what_resp2_clients_get() {
        let reply = Reply::Array(vec![
            Reply::fields([("name", "mymaster"), ("port", "6379")]),
            Reply::Push(vec![Reply::bulk("message"), Reply::Integer(1)]),
            Reply::Map(vec![]),
        ]);
        assert_eq!(
            String::from_utf8(reply.to_bytes()).unwrap(),
            "*3\r\n*4\r\n$4\r\nname\r\n$8\r\nmymaster\r\n$4\r\nport\r\n$4\r\n6379\r\n\
             *2\r\n$7\r\nmessage\r\n:1\r\n*0\r\n"
        );
    }

    #[test]
    fn encodes_every_reply_type_in_resp3() {
        let reply = Reply::Array(vec![
            Reply::ok(),
            Reply::err("x"),
            Reply::Integer(-3),
            Reply::bulk("ab"),
            Reply::Null,
            Reply::NullArray,
            Reply::fields([("ip", "198.18.1.11")]),
            Reply::Push(vec![Reply::bulk("pong"), Reply::Bulk(Vec::new())]),
            Reply::Map(vec![]),
        ]);
        assert_eq!(
            String::from_utf8(reply.to_bytes_in(Protocol::Resp3)).unwrap(),
            "*9\r\n+OK\r\n-ERR x\r\n:-3\r\n$2\r\nab\r\n_\r\n_\r\n\
             %1\r\n$2\r\nip\r\n$11\r\n198.18.1.11\r\n>2\r\n$4\r\npong\r\n$0\r\n\r\n%0\r\n"
        );
    }

    #[test]
    fn resp3_replies_parse_with_the_redis_crate() {
        let map = Reply::fields([("name", "mymaster"), ("port", "6379")]);
        let value = redis::parse_redis_value(&map.to_bytes_in(Protocol::Resp3)).unwrap();
        assert!(matches!(value, redis::Value::Map(_)), "{value:?}");
        let fields: std::collections::HashMap<String, String> =
            redis::from_redis_value(&value).unwrap();
        assert_eq!(fields["name"], "mymaster");
        assert_eq!(fields["port"], "6379");

        let null = redis::parse_redis_value(&Reply::NullArray.to_bytes_in(Protocol::Resp3));
        assert_eq!(null.unwrap(), redis::Value::Nil);

        let push = Reply::Push(vec![
            Reply::bulk("message"),
            Reply::bulk("+sdown"),
            Reply::bulk("master mymaster 198.18.1.11 6379"),
        ]);
        match redis::parse_redis_value(&push.to_bytes_in(Protocol::Resp3)).unwrap() {
            redis::Value::Push { kind, data } => {
                assert_eq!(kind, redis::PushKind::Message);
                assert_eq!(data.len(), 2, "channel and payload: {data:?}");
            }
            other => panic!("not a push: {other:?}"),
        }
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
