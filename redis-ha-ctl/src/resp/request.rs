//! Requests as clients send them, parsed incrementally: [`RequestParser`] owns a connection's
//! input buffer and keeps its place across reads (the line it is scanning, the arguments
//! already taken, the bytes a bulk string still needs), so that every byte is looked at a
//! bounded number of times however the input is cut into segments. Parsing the whole pending
//! input again on each read would let a client that trickles a large request one byte per
//! segment cost the controller a copy of everything it sent so far, per byte.

/// Most bytes of an inline request line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Longest `*<count>` or `$<len>` header line: a few digits; anything longer is garbage.
pub(super) const MAX_HEADER_LEN: usize = 32;

/// How big one request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Bytes of one request as sent (headers and arguments): a multibulk declaring more is
    /// refused before its arguments arrive.
    pub max_bytes: usize,
    /// Arguments of one request, the command name included.
    pub max_args: usize,
}

impl Default for RequestLimits {
    /// What Sentinel's commands need many times over: they carry a handful of short names,
    /// addresses and patterns.
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_args: 1024,
        }
    }
}

/// Input that is not a valid request, or exceeds the limits; the message is Redis's (the
/// reply is `-ERR Protocol error: <message>`).
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

impl ProtocolError {
    /// Whether the request was refused for its size rather than its syntax (a limit hit, which
    /// the metrics count apart).
    pub fn is_size_limit(&self) -> bool {
        matches!(
            self,
            Self::MultibulkLength | Self::BulkLength | Self::InlineTooLong
        )
    }
}

/// One request: the command name and its arguments, as sent. Empty for a request that asks
/// nothing (`*0`, a blank inline line), which Redis ignores.
pub type Request = Vec<Vec<u8>>;

/// Where the parser is within the request at the front of the input.
#[derive(Debug, Default)]
enum State {
    /// Between requests.
    #[default]
    Idle,
    /// Scanning an inline request's line.
    Inline,
    Multibulk(Multibulk),
}

/// A `*<count>` request being received.
#[derive(Debug)]
struct Multibulk {
    count: usize,
    /// The arguments taken so far.
    args: Vec<Vec<u8>>,
    /// The argument being received and the bytes it still needs, its CRLF included.
    bulk: Option<(Vec<u8>, usize)>,
    /// Bytes of the request so far, declared lengths included, for `max_bytes`.
    size: usize,
}

/// A connection's unparsed input and how far into it the current request has been parsed.
#[derive(Debug)]
pub struct RequestParser {
    buf: Vec<u8>,
    /// `buf[..start]` has been parsed and is only kept until the next compaction.
    start: usize,
    /// Bytes after `start` already scanned for the end of the current line without finding it.
    scanned: usize,
    state: State,
    limits: RequestLimits,
    /// Bytes looked at or moved (scanned for a line end, copied into an argument, moved by
    /// compaction): what the tests bound to show the work per byte is constant.
    work: u64,
}

impl RequestParser {
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            buf: Vec::with_capacity(4096),
            start: 0,
            scanned: 0,
            state: State::Idle,
            limits,
            work: 0,
        }
    }

    /// The buffer to read more input into (append only). Parsed bytes are dropped first, but
    /// only once they are at least as many as those kept, so that moving the kept ones costs
    /// at most one move per byte overall.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        let kept = self.buf.len() - self.start;
        if self.start > 0 && self.start >= kept {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(kept);
            self.work += kept as u64;
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        &mut self.buf
    }

    /// Bytes looked at or moved so far (see the field).
    pub fn work(&self) -> u64 {
        self.work
    }

    /// The next complete request, `None` until one is buffered, or an error (never a panic)
    /// for input that is not RESP or exceeds the limits; the connection is then closed after
    /// an error reply, as Redis does, since resynchronising on a broken stream would misread
    /// what follows.
    pub fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        loop {
            // Taken out and put back by each step, so a step owns what it works on.
            match std::mem::take(&mut self.state) {
                State::Idle => match self.buf.get(self.start) {
                    None => return Ok(None),
                    Some(b'*') => {
                        let Some((header, used)) =
                            self.line(MAX_HEADER_LEN, ProtocolError::HeaderTooLong)?
                        else {
                            return Ok(None);
                        };
                        let count = number(&self.buf[header.start + 1..header.end])
                            .ok_or(ProtocolError::MultibulkLength)?;
                        if count > self.limits.max_args as i64 {
                            return Err(ProtocolError::MultibulkLength);
                        }
                        if count <= 0 {
                            // `*0` and `*-1`: nothing to run, as Redis treats them.
                            return Ok(Some(Vec::new()));
                        }
                        self.state = State::Multibulk(Multibulk {
                            count: count as usize,
                            // Grown as arguments arrive: a count alone must not reserve memory.
                            args: Vec::new(),
                            bulk: None,
                            size: used,
                        });
                    }
                    Some(_) => self.state = State::Inline,
                },
                State::Inline => {
                    let Some((line, _)) =
                        self.line(MAX_INLINE_LEN, ProtocolError::InlineTooLong)?
                    else {
                        self.state = State::Inline;
                        return Ok(None);
                    };
                    let text = &self.buf[line];
                    self.work += text.len() as u64;
                    let args = split_inline(text)?;
                    if args.len() > self.limits.max_args {
                        return Err(ProtocolError::MultibulkLength);
                    }
                    return Ok(Some(args));
                }
                State::Multibulk(mut mb) => match mb.bulk.take() {
                    Some((arg, needed)) => {
                        let arg = match self.receive(arg, needed)? {
                            Ok(arg) => arg,
                            Err(partial) => {
                                mb.bulk = Some(partial);
                                self.state = State::Multibulk(mb);
                                return Ok(None);
                            }
                        };
                        mb.args.push(arg);
                        if mb.args.len() == mb.count {
                            return Ok(Some(mb.args));
                        }
                        self.state = State::Multibulk(mb);
                    }
                    None => {
                        let Some((header, used)) =
                            self.line(MAX_HEADER_LEN, ProtocolError::HeaderTooLong)?
                        else {
                            self.state = State::Multibulk(mb);
                            return Ok(None);
                        };
                        match self.buf.get(header.start) {
                            Some(b'$') => {}
                            Some(&c) if header.start < header.end => {
                                return Err(ProtocolError::ExpectedBulk(c as char));
                            }
                            _ => return Err(ProtocolError::ExpectedBulk(' ')),
                        }
                        // Checked: a length near usize::MAX must be refused, not wrap past the
                        // limit.
                        let len = number(&self.buf[header.start + 1..header.end])
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|&n| {
                                mb.size
                                    .checked_add(used)
                                    .and_then(|s| s.checked_add(n))
                                    .and_then(|s| s.checked_add(2))
                                    .is_some_and(|s| s <= self.limits.max_bytes)
                            })
                            .ok_or(ProtocolError::BulkLength)?;
                        mb.size += used + len + 2;
                        mb.bulk = Some((Vec::new(), len + 2));
                        self.state = State::Multibulk(mb);
                    }
                },
            }
        }
    }

    /// Takes what is buffered of a bulk string that still needs `needed` bytes (its CRLF
    /// included, which is checked, not kept): the whole argument, or `Err` with what it has
    /// and still needs.
    #[allow(clippy::type_complexity)]
    fn receive(
        &mut self,
        mut arg: Vec<u8>,
        needed: usize,
    ) -> Result<Result<Vec<u8>, (Vec<u8>, usize)>, ProtocolError> {
        let take = (self.buf.len() - self.start).min(needed);
        let data = take.min(needed.saturating_sub(2));
        arg.extend_from_slice(&self.buf[self.start..self.start + data]);
        // Where in the CRLF the bytes after the data start.
        let crlf_from = 2usize.saturating_sub(needed - data);
        let crlf = &self.buf[self.start + data..self.start + take];
        if crlf != &b"\r\n"[crlf_from..crlf_from + crlf.len()] {
            return Err(ProtocolError::MissingCrlf);
        }
        self.work += take as u64;
        self.start += take;
        Ok(if take == needed {
            Ok(arg)
        } else {
            Err((arg, needed - take))
        })
    }

    /// The line starting at `start` without its `\r\n` (or bare `\n`), and the bytes it took
    /// with them, consumed; `None` until its end arrives; `too_long` once more than `max`
    /// bytes came without one. Resumes the search where the last call stopped.
    fn line(
        &mut self,
        max: usize,
        too_long: ProtocolError,
    ) -> Result<Option<(std::ops::Range<usize>, usize)>, ProtocolError> {
        let from = self.start + self.scanned;
        let Some(nl) = self.buf[from..].iter().position(|&b| b == b'\n') else {
            let scanned = self.buf.len() - from;
            self.work += scanned as u64;
            self.scanned += scanned;
            // A CR last may be the first half of the CRLF that ends the line, not part of it:
            // counting it would refuse a line of exactly `max` bytes when the read ends
            // between CR and LF, and accept it when both arrive together.
            let pending_cr = self.scanned > 0 && self.buf.last() == Some(&b'\r');
            return if self.scanned - usize::from(pending_cr) > max {
                Err(too_long)
            } else {
                Ok(None)
            };
        };
        self.work += nl as u64 + 1;
        let newline = from + nl;
        let end = if newline > self.start && self.buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        if end - self.start > max {
            return Err(too_long);
        }
        let line = self.start..end;
        let used = newline + 1 - self.start;
        self.start = newline + 1;
        self.scanned = 0;
        Ok(Some((line, used)))
    }
}

fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parses one request from the front of `buf` with the default limits:
/// `Ok(Some((request, bytes used)))`, or `Ok(None)` when more input is needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let mut parser = RequestParser::new(RequestLimits::default());
    parser.buffer().extend_from_slice(buf);
    Ok(parser.next_request()?.map(|r| (r, parser.start)))
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
