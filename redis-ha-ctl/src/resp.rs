//! The server half of RESP2, Redis's wire protocol: parsing requests, encoding replies.
//!
//! Clients send a command as an array of bulk strings (`*2\r\n$4\r\nPING\r\n...`), or, typed by
//! hand (telnet, `nc`), as one "inline" line of space-separated words. Replies are one of five
//! types. The `redis` crate already speaks the client half (the CLI uses it); a server needs only
//! this much, with limits, so it is written here rather than pulled in from a framework crate.
//!
//! [`parse_request`] is incremental: it returns `None` until a whole request is buffered, and an
//! error (never a panic) for input that is not RESP or exceeds the limits; the connection is then
//! closed after an error reply, as Redis does.

use std::fmt;

/// Most arguments one request may carry (the largest we need is a handful).
pub const MAX_ARGS: usize = 1024;
/// Longest argument: names, addresses and patterns are short.
pub const MAX_ARG_LEN: usize = 64 * 1024;
/// Longest inline request line.
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// Input that is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    MultibulkLength,
    #[error("invalid bulk length")]
    BulkLength,
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("expected CRLF after a bulk string")]
    MissingCrlf,
    #[error("too big inline request")]
    InlineTooLong,
    #[error("too big multibulk or bulk length line")]
    HeaderTooLong,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One request: the command name and its arguments, as sent.
pub type Request = Vec<Vec<u8>>;

/// Parses one request from the front of `buf`: `Ok(Some((request, bytes used)))`, or `Ok(None)`
/// when more input is needed. An empty inline line is skipped (returned as an empty request),
/// as Redis ignores it.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

/// The line starting at `from`, without its `\r\n`, and the index after it; `too_long` once
/// more than `max` bytes came without a line end.
fn line(
    buf: &[u8],
    from: usize,
    max: usize,
    too_long: ProtocolError,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[from..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, from + nl + 1)))
        }
        None if rest.len() > max => Err(too_long),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    // A header line is a few digits; anything longer is garbage.
    let Some((header, mut at)) = line(buf, 0, 32, ProtocolError::HeaderTooLong)? else {
        return Ok(None);
    };
    let count = number(&header[1..]).ok_or(ProtocolError::MultibulkLength)?;
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError::MultibulkLength);
    }
    if count <= 0 {
        // `*0` and `*-1`: nothing to run, as Redis treats them.
        return Ok(Some((Vec::new(), at)));
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some((header, next)) = line(buf, at, 32, ProtocolError::HeaderTooLong)? else {
            return Ok(None);
        };
        match header.first() {
            Some(b'$') => {}
            Some(&c) => return Err(ProtocolError::ExpectedBulk(c as char)),
            None => return Err(ProtocolError::ExpectedBulk(' ')),
        }
        let len = number(&header[1..])
            .filter(|&n| (0..=MAX_ARG_LEN as i64).contains(&n))
            .ok_or(ProtocolError::BulkLength)? as usize;
        let end = next + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(buf[next..end].to_vec());
        at = end + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some((text, used)) = line(buf, 0, MAX_INLINE_LEN, ProtocolError::InlineTooLong)? else {
        return Ok(None);
    };
    if text.len() > MAX_INLINE_LEN {
        return Err(ProtocolError::InlineTooLong);
    }
    let args = split_inline(text)?;
    if args.len() > MAX_ARGS {
        return Err(ProtocolError::MultibulkLength);
    }
    Ok(Some((args, used)))
}

/// Splits an inline line into words; double or single quotes group words with spaces (no
/// escapes inside them beyond `\"` and `\\`: enough for typing commands by hand).
fn split_inline(text: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        if text[i] == b'"' || text[i] == b'\'' {
            let quote = text[i];
            i += 1;
            loop {
                match text.get(i) {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(&b) if b == quote => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if quote == b'"' && i + 1 < text.len() => {
                        word.push(text[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        word.push(b);
                        i += 1;
                    }
                }
            }
            if text.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                return Err(ProtocolError::UnbalancedQuotes);
            }
        } else {
            while i < text.len() && !text[i].is_ascii_whitespace() {
                word.push(text[i]);
                i += 1;
            }
        }
        args.push(word);
    }
    Ok(args)
}

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

    fn args(words: &[&str]) -> Request {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_multibulk_requests_incrementally() {
        let wire = b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\n*1\r\n$4\r\nPING\r\n";
        let first_len = wire.len() - b"*1\r\n$4\r\nPING\r\n".len();
        for cut in 0..first_len {
            assert_eq!(parse_request(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (req, used) = parse_request(wire).unwrap().unwrap();
        assert_eq!(
            req,
            args(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
        );
        assert_eq!(used, first_len);
        let (req, used2) = parse_request(&wire[used..]).unwrap().unwrap();
        assert_eq!(req, args(&["PING"]));
        assert_eq!(used + used2, wire.len());
        // Binary-safe.
        let (req, _) = parse_request(b"*1\r\n$3\r\na\r\n\r\n").unwrap().unwrap();
        assert_eq!(req, vec![b"a\r\n".to_vec()]);
    }

    #[test]
    fn parses_inline_requests() {
        let (req, used) = parse_request(b"PING\r\nrest").unwrap().unwrap();
        assert_eq!((req, used), (args(&["PING"]), 6));
        let (req, _) = parse_request(b"  sentinel  master \"my master\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(req, args(&["sentinel", "master", "my master"]));
        assert_eq!(parse_request(b"\r\n"), Ok(Some((Vec::new(), 2))));
        assert_eq!(parse_request(b"PING"), Ok(None));
        assert_eq!(
            parse_request(b"SET \"a b\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn malformed_or_oversized_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"*x\r\n",
            b"*99999999999999999999\r\n",
            b"*2000\r\n",
            b"*1\r\n:1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$99999999\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*1\r\n\r\n",
        ];
        for case in cases {
            assert!(
                parse_request(case).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let long = vec![b'a'; MAX_INLINE_LEN + 10];
        assert_eq!(parse_request(&long), Err(ProtocolError::InlineTooLong));
        let long_header = [b"*1\r\n$".as_slice(), &[b'1'; 100]].concat();
        assert!(parse_request(&long_header).is_err());
        // Every prefix of every case parses or fails, never panics.
        for case in cases {
            for cut in 0..case.len() {
                let _ = parse_request(&case[..cut]);
            }
        }
        assert_eq!(parse_request(b"*0\r\n"), Ok(Some((Vec::new(), 4))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes biased towards RESP's own characters.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"*$\r\n0123456789-+:abc \"'";
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let mut buf = input.as_slice();
            // Drain as a connection would, until it needs more or fails.
            while let Ok(Some((_, used))) = parse_request(buf) {
                assert!(used > 0 && used <= buf.len());
                buf = &buf[used..];
            }
            x = x.wrapping_add(1);
        }
    }

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
