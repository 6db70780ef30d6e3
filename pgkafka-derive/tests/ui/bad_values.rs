use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(table = 5)]
#[replicated(topic = "")]
struct Inventory {
    id: i64,
}

#[derive(ReplicatedTable)]
#[replicated(partition_key = "id")]
struct Orders {
    id: i64,
}

fn main() {}
