use pgkafka::ReplicatedTable;

struct Sku(String);

#[derive(ReplicatedTable)]
struct Inventory {
    id: i64,
    sku: Sku,
}

fn main() {}
