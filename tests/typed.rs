//! The typed layer against the real servers: PostgreSQL renders values as text and they parse
//! back to what was inserted; derived structs decode real rows and are checked against live
//! tables; typed routers handle ops read from Kafka, inside real transactions for the idempotent
//! flavor, and fed end to end by the real producer.

mod check_table;
mod derive;
mod end_to_end;
mod route_validation;
mod routing;
mod text;
