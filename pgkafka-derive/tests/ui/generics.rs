use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
struct Inventory<T> {
    id: i64,
    payload: T,
}

fn main() {}
