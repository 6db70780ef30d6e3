use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(column = "x")]
struct Inventory {
    #[replicated(topic = "t")]
    id: i64,
}

fn main() {}
