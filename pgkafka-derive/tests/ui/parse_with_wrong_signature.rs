use pgkafka::ReplicatedTable;

fn parse_sku(text: String) -> Result<String, String> {
    Ok(text)
}

#[derive(ReplicatedTable)]
struct Inventory {
    #[replicated(parse_with = parse_sku)]
    sku: String,
}

fn main() {}
