use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(partition_key = [id])]
struct Heartbeat {}

fn main() {}
