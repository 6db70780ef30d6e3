//! Kafka record values are untrusted: decoding must never panic, and what decodes re-encodes to
//! JSON that decodes to the same op.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(op) = serde_json::from_slice::<pgkafka_common::ReplicationOp>(data) {
        let again = serde_json::to_vec(&op).expect("a decoded op encodes");
        let back: pgkafka_common::ReplicationOp = serde_json::from_slice(&again).expect("an encoded op decodes");
        assert_eq!(back, op);
    }
});
