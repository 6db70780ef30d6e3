use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
struct Inventory(i64, String);

fn main() {}
