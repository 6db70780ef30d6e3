//! Decoding of PostgreSQL `pgoutput` logical replication messages.
