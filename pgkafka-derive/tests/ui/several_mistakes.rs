use pgkafka::ReplicatedTable;

// Every mistake is reported at once, and none of them cascades into "trait not implemented".
#[derive(ReplicatedTable)]
#[replicated(table = "inventory", partition_key = [org, sku, sku])]
struct Inventory {
    #[replicated(colum = "org_id")]
    organization_id: i64,
    sku: String,
}

fn topic() -> &'static str {
    <Inventory as pgkafka::ReplicatedTable>::TOPIC
}

fn main() {
    let _ = topic();
}
