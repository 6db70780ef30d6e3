//! Prints where the local services started by `scripts/services.sh up` listen.
fn main() {}
