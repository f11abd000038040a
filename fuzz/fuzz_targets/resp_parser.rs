//! The API's incremental RESP request parser, on arbitrary bytes cut into arbitrary reads.
//!
//! Input: 2 bytes choosing `max_bytes`, 1 choosing `max_args`, 1 seeding how the rest is cut
//! into reads, then the bytes a client sends. Checks, besides never panicking:
//! - the requests and the final outcome (need more input, or which protocol error) are the
//!   same as when all the bytes arrive in one read: a parser that keeps its place across reads
//!   must not depend on where the reads end;
//! - no request exceeds the limits;
//! - the parser's work and the memory allocated while parsing grow with the bytes received,
//!   not with the lengths a request declares (a `*1000000` or `$1000000` costs nothing
//!   until its bytes arrive).

#![no_main]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use libfuzzer_sys::fuzz_target;
use redis_ha_ctl::resp::{MAX_INLINE_LEN, ProtocolError, Request, RequestLimits, RequestParser};

/// The system allocator, counting the bytes live and the most live at once, so the target can
/// bound what parsing allocates.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Feeds `reads` one after the other, handing every complete request to `take` after each,
/// as the API's connection loop does; stops at the first error, after which the connection is
/// closed. How the input ended (`Ok`: the parser waits for more), and the parser's work.
fn parse<'a>(
    limits: RequestLimits,
    reads: impl IntoIterator<Item = &'a [u8]>,
    mut take: impl FnMut(Request),
) -> (Result<(), ProtocolError>, u64) {
    let mut parser = RequestParser::new(limits);
    for read in reads {
        parser.buffer().extend_from_slice(read);
        loop {
            match parser.next_request() {
                Ok(Some(request)) => take(request),
                Ok(None) => break,
                Err(e) => return (Err(e), parser.work()),
            }
        }
    }
    (Ok(()), parser.work())
}

/// Cuts `data` into reads of 1 to 2^k bytes, `k` and the lengths drawn from `seed`
/// (xorshift): seed 0 gives one byte per read, the slowest trickle.
fn cut(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x9e37_0000;
    let span = 1u32 << (seed % 12);
    let mut reads = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = if seed == 0 {
            1
        } else {
            1 + (state % span) as usize
        };
        let (read, after) = rest.split_at(len.min(rest.len()));
        reads.push(read);
        rest = after;
    }
    reads
}

fuzz_target!(|input: &[u8]| {
    let Some((header, data)) = input.split_first_chunk::<4>() else {
        return;
    };
    let limits = RequestLimits {
        // 16 bytes to 1 MiB, the default.
        max_bytes: 16 + usize::from(u16::from_le_bytes([header[0], header[1]])) * 16,
        max_args: 1 + usize::from(header[2]) * 4,
    };

    let mut whole = Vec::new();
    let (whole_end, _) = parse(limits, [data], |r| whole.push(r));
    let reads = cut(data, header[3]);
    // Each request is checked and dropped as it comes, so that what is counted is what the
    // parser holds, not the requests a connection has already run.
    let mut taken = 0;
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let (pieces_end, work) = parse(limits, reads.iter().copied(), |request| {
        assert_eq!(
            whole.get(taken),
            Some(&request),
            "request {taken} differs when the input is cut into {} reads",
            reads.len()
        );
        taken += 1;
        assert!(request.len() <= limits.max_args, "{} args", request.len());
        let bytes: usize = request.iter().map(Vec::len).sum();
        assert!(
            bytes <= limits.max_bytes.max(MAX_INLINE_LEN),
            "{bytes} bytes in one request"
        );
    });
    let allocated = PEAK.load(Relaxed) - before;
    assert_eq!(
        (taken, &pieces_end),
        (whole.len(), &whole_end),
        "the input cut into {} reads ends differently from one read",
        reads.len()
    );
    let n = data.len() as u64;
    assert!(work <= 3 * n, "{work} bytes of work for {n} bytes of input");
    // What the parser holds is a copy of the input (its buffer, the arguments taken out of it,
    // each argument's `Vec` of 24 bytes, at most one per 4 input bytes: `$0\r\n`), in `Vec`s
    // that at most double when they grow, plus the buffer's first 4 KiB.
    let bound = 24 * data.len() + 16 * 1024;
    assert!(
        allocated <= bound,
        "{allocated} bytes allocated while parsing {} bytes (bound {bound})",
        data.len()
    );
});
