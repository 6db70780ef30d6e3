use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
struct Inventory {
    id: i64,
    #[replicated(column = "id")]
    id_again: i64,
}

fn main() {}
