use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
enum Inventory {
    Item { id: i64 },
}

fn main() {}
