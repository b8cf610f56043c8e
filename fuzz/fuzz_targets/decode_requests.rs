//! Fuzzes what the client port does with a connection's bytes before a call is carried out:
//! transport and protocol detection, finding where each message ends, the multiplexed prefix,
//! and decoding each message into a call with the generated processor. Any panic is a bug.
//! Run: `cargo +nightly fuzz run decode_requests` (see docs/testing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A small message limit, so the fuzzer reaches the limit checks quickly.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

fuzz_target!(|bytes: &[u8]| {
    raftcache::api::decode_connection_bytes(bytes, MAX_MESSAGE_BYTES);
});
