//! Bytes from the replication connection must never make the decoder panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pgkafka_common::pgoutput::decode(data);
});
