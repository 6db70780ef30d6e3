use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
#[replicated(table = "inventory", partition_key = [organisation_id])]
struct Inventory {
    organization_id: i64,
    sku: String,
}

fn main() {}
