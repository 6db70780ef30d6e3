use pgkafka::ReplicatedTable;

#[derive(ReplicatedTable)]
struct Inventory {
    #[replicated(rename = "org_id")]
    organization_id: i64,
}

fn main() {}
