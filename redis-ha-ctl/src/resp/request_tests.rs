//! The request parser: the wire forms it accepts, the errors it gives, and that its work per
//! byte stays bounded however the input is cut.

use super::request::MAX_HEADER_LEN;
use super::{MAX_INLINE_LEN, ProtocolError, Request, RequestLimits, RequestParser, parse_request};

fn args(words: &[&str]) -> Request {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// Every request `wire` holds, fed in pieces of `piece` bytes, and the parser's work.
fn feed(
    wire: &[u8],
    piece: usize,
    limits: RequestLimits,
) -> (Vec<Request>, Result<(), ProtocolError>, u64) {
    let mut parser = RequestParser::new(limits);
    let mut requests = Vec::new();
    for chunk in wire.chunks(piece) {
        parser.buffer().extend_from_slice(chunk);
        loop {
            match parser.next_request() {
                Ok(Some(r)) => requests.push(r),
                Ok(None) => break,
                Err(e) => return (requests, Err(e), parser.work()),
            }
        }
    }
    (requests, Ok(()), parser.work())
}

/// `*N` then N bulk strings.
fn multibulk(words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn a_large_request_trickled_one_byte_per_read_costs_constant_work_per_byte() {
    // About 1 MB in 1000 arguments: parsing everything pending again on every read, as the
    // parser once did, copies every complete argument again per byte (~5e11 bytes here).
    let words: Vec<Vec<u8>> = std::iter::once(b"PING".to_vec())
        .chain((0..999).map(|i| vec![b'a' + (i % 26) as u8; 1000]))
        .collect();
    let wire = multibulk(&words);
    assert!(wire.len() > 1_000_000 && wire.len() < RequestLimits::default().max_bytes);
    let (requests, result, work) = feed(&wire, 1, RequestLimits::default());
    assert_eq!(result, Ok(()));
    assert_eq!(requests, vec![words]);
    assert!(
        work <= 3 * wire.len() as u64,
        "{work} bytes of work for a request of {} bytes",
        wire.len()
    );

    // An inline line trickled the same way: its end is searched from where the last read
    // stopped.
    let line = [b"ECHO ".as_slice(), &[b'x'; 60_000], b"\r\n"].concat();
    let (requests, result, work) = feed(&line, 1, RequestLimits::default());
    assert_eq!(result, Ok(()));
    assert_eq!(requests[0][1].len(), 60_000);
    assert!(work <= 3 * line.len() as u64, "{work} for {}", line.len());

    // Many small pipelined requests, in reads of any size.
    let wire: Vec<u8> = (0..10_000)
        .flat_map(|_| b"*1\r\n$4\r\nPING\r\n".iter().copied())
        .collect();
    for piece in [1, 7, 4096, wire.len()] {
        let (requests, result, work) = feed(&wire, piece, RequestLimits::default());
        assert_eq!((requests.len(), result), (10_000, Ok(())), "piece {piece}");
        assert!(work <= 3 * wire.len() as u64, "piece {piece}: {work}");
    }
}

#[test]
fn any_cut_of_the_input_parses_as_the_whole() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let wire = [
        multibulk(&[b"SENTINEL".to_vec(), b"masters".to_vec()]),
        b"PING\r\n  echo \"a b\"\n\r\n".to_vec(),
        multibulk(&[b"ECHO".to_vec(), b"bin\r\nary".to_vec()]),
        b"*0\r\n*-1\r\n".to_vec(),
        multibulk(&[b"ECHO".to_vec(), vec![b'z'; 5000]]),
    ]
    .concat();
    let (whole, result, _) = feed(&wire, wire.len(), RequestLimits::default());
    assert_eq!(result, Ok(()));
    assert_eq!(whole.len(), 8);
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let piece = 1 + (x % 64) as usize;
        let (requests, result, _) = feed(&wire, piece, RequestLimits::default());
        assert_eq!((&requests, result), (&whole, Ok(())), "piece {piece}");
    }
}

/// Found while writing the `resp_parser` fuzz target's differential check (cut reads against
/// one read): a line of exactly the longest length allowed was refused as too long when a read
/// ended between its CR and its LF (the CR was counted as part of the line), and accepted when
/// the CRLF arrived in one read.
#[test]
fn a_line_of_the_longest_length_parses_however_its_crlf_is_cut() {
    let header = format!("*{:0>width$}", 1, width = MAX_HEADER_LEN - 1);
    let inline = "x".repeat(MAX_INLINE_LEN);
    for (wire, expected) in [
        (format!("{header}\r\n$4\r\nPING\r\n"), args(&["PING"])),
        (format!("{inline}\r\n"), vec![inline.clone().into_bytes()]),
    ] {
        let wire = wire.as_bytes();
        let cr = wire.iter().position(|&b| b == b'\r').unwrap();
        let mut parser = RequestParser::new(RequestLimits::default());
        parser.buffer().extend_from_slice(&wire[..=cr]);
        assert_eq!(
            parser.next_request(),
            Ok(None),
            "a read ending after the CR"
        );
        parser.buffer().extend_from_slice(&wire[cr + 1..]);
        assert_eq!(parser.next_request(), Ok(Some(expected.clone())));
        assert_eq!(
            feed(wire, wire.len(), RequestLimits::default()).0,
            [expected]
        );
    }
    // One byte more is still refused, whether the CR has arrived or not.
    let long = format!("*{:0>width$}\r", 1, width = MAX_HEADER_LEN);
    let mut parser = RequestParser::new(RequestLimits::default());
    parser.buffer().extend_from_slice(long.as_bytes());
    assert_eq!(parser.next_request(), Err(ProtocolError::HeaderTooLong));
}

#[test]
fn requests_over_the_limits_are_refused_before_their_bytes_arrive() {
    let limits = RequestLimits {
        max_bytes: 100,
        max_args: 3,
    };
    let refused = |wire: &[u8]| feed(wire, wire.len(), limits).1;
    // The header alone is enough to refuse: nothing of the argument is buffered.
    assert_eq!(
        refused(b"*2\r\n$4\r\nECHO\r\n$200\r\n"),
        Err(ProtocolError::BulkLength)
    );
    // Declared lengths add up, each under the limit alone.
    assert_eq!(
        refused(b"*3\r\n$4\r\nECHO\r\n$50\r\n"),
        Ok(()),
        "under the limit so far"
    );
    let fifty = [b'a'; 50];
    let two = multibulk(&[fifty.to_vec(), fifty.to_vec()]);
    assert_eq!(refused(&two), Err(ProtocolError::BulkLength));
    assert_eq!(refused(b"*4\r\n"), Err(ProtocolError::MultibulkLength));
    assert_eq!(refused(b"a b c d\r\n"), Err(ProtocolError::MultibulkLength));
    // Lengths that would wrap the size count are refused, not wrapped.
    let wire = b"*1\r\n$9223372036854775807\r\n";
    assert_eq!(
        feed(wire, 1, RequestLimits::default()).1,
        Err(ProtocolError::BulkLength)
    );
    for len in ["18446744073709551615", "-1"] {
        let wire = format!("*1\r\n${len}\r\n");
        let lenient = RequestLimits {
            max_bytes: usize::MAX,
            max_args: 3,
        };
        assert_eq!(
            feed(wire.as_bytes(), 1, lenient).1,
            Err(ProtocolError::BulkLength),
            "{len}"
        );
    }
    assert!(ProtocolError::BulkLength.is_size_limit());
    assert!(!ProtocolError::MissingCrlf.is_size_limit());
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
