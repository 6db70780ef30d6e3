//! `#[derive(ReplicatedTable)]`, re-exported as `pgkafka::ReplicatedTable`.
