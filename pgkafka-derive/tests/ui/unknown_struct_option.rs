use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(tabel = "inventory")]
struct Inventory {
    id: i64,
}

fn main() {}
