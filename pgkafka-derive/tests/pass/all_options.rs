//! Every option, the way the documentation shows them, compiles and decodes.
#![deny(warnings)]

use pgkafka::{ReplicatedTable, TypedOp};

mod parsers {
    pub fn sku(text: &str) -> Result<String, std::num::ParseIntError> {
        text.parse::<u32>().map(|n| format!("SKU-{n:05}"))
    }

    pub fn cents(text: &str) -> Result<i64, String> {
        let (units, cents) = text.split_once('.').ok_or("no decimal point")?;
        Ok(units.parse::<i64>().map_err(|e| e.to_string())? * 100 + cents.parse::<i64>().map_err(|e| e.to_string())?)
    }

    pub fn unknown() -> String {
        "unknown".to_owned()
    }
}

#[derive(ReplicatedTable, Debug, PartialEq)]
#[replicated(table = "inventory", schema = "shop", topic = "inventory_topic", partition_key = [organization_id, sku])]
pub struct Inventory {
    #[replicated(column = "org_id")]
    organization_id: i64,
    #[replicated(parse_with = parsers::sku)]
    sku: String,
    #[replicated(parse_with = "parsers::cents")]
    price: Option<i64>,
    #[replicated(default)]
    tags: Vec<String>,
    #[replicated(default = parsers::unknown)]
    warehouse: String,
    r#type: Option<String>,
}

// Names the expansion uses must not clash with the user's.
#[allow(dead_code, non_camel_case_types)]
struct __pgk;
#[allow(dead_code)]
type Result<T> = std::result::Result<T, ()>;
#[allow(dead_code)]
struct Ok;

#[derive(ReplicatedTable)]
struct OrderLine {
    id: i64,
}

/// pgkafka reached through another path, as when the dependency is renamed.
mod reexport {
    pub use pgkafka as pgk;
}

#[derive(ReplicatedTable)]
#[replicated(crate = "reexport::pgk", table = "renamed")]
struct Renamed {
    #[allow(dead_code)]
    id: i64,
}

fn main() {
    assert_eq!(Inventory::TABLE_NAME, "shop.inventory");
    assert_eq!(Inventory::TOPIC, "inventory_topic");
    assert_eq!(Inventory::PARTITION_KEY, ["org_id", "sku"]);
    let names: Vec<&str> = Inventory::COLUMNS.iter().map(|c| c.name).collect();
    assert_eq!(names, ["org_id", "sku", "price", "tags", "warehouse", "type"]);
    let nullable: Vec<bool> = Inventory::COLUMNS.iter().map(|c| c.nullable).collect();
    assert_eq!(nullable, [false, false, true, false, false, true]);
    let defaults: Vec<bool> = Inventory::COLUMNS.iter().map(|c| c.has_default).collect();
    assert_eq!(defaults, [false, false, false, true, true, false]);
    assert_eq!(Inventory::COLUMNS[2].rust_type, "Option<i64>");
    assert_eq!(OrderLine::TABLE_NAME, "order_line");
    assert_eq!(OrderLine::TOPIC, "order_line");
    assert_eq!(Renamed::TABLE_NAME, "renamed");

    let op: pgkafka::ReplicationOp = serde_json::from_str(
        r#"{"table_name":"shop.inventory","col_names":["sku","org_id","price","type","added_later"],
            "lsn":1,"seq_id":0,"op":{"Insert":["7","42",null,"x","?"]}}"#,
    )
    .unwrap();
    let typed = TypedOp::<Inventory>::from_op(&op).unwrap();
    assert_eq!(
        typed.change,
        pgkafka::Change::Insert(Inventory {
            organization_id: 42,
            sku: "SKU-00007".into(),
            price: None,
            tags: vec![],
            warehouse: "unknown".into(),
            r#type: Some("x".into()),
        })
    );
}
