use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(table = "inventory")]
#[replicated(topic = "inventory_topic", table = "stock")]
struct Inventory {
    #[replicated(column = "a", column = "b")]
    id: i64,
}

fn main() {}
