//! The Debezium output format through a real producer: Debezium's documented example events
//! reproduced field for field (`tests/fixtures/debezium/golden/`), every type of the README's type table
//! value by value, tombstones, transaction metadata and heartbeats.

use std::fmt;
use std::time::{Duration, Instant};

use pgkafka::{DebeziumOptions, DecimalHandling, OutputFormat};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::reference::all_ops;
use pgkafka_tests::topics::read_topics;
use pgkafka_tests::{create_topic, unique_name, Record};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{json, Value};

use super::{id_table, Scenario, Table};

/// A golden file of `tests/fixtures/debezium/golden/`.
pub(super) fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/debezium/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Removes the fields that differ from run to run: timestamps, LSNs, the transaction id, the
/// version. `value` is an envelope payload or a `{"schema", "payload"}` pair.
pub(super) fn strip_volatile(mut value: Value) -> Value {
    let payload = if value.get("payload").is_some() { &mut value["payload"] } else { &mut value };
    if let Some(payload) = payload.as_object_mut() {
        for field in ["ts_ms", "ts_us", "ts_ns"] {
            payload.remove(field);
        }
        if let Some(source) = payload.get_mut("source").and_then(Value::as_object_mut) {
            for field in ["ts_ms", "ts_us", "ts_ns", "version", "lsn", "txId", "sequence", "xmin"] {
                source.remove(field);
            }
        }
    }
    value
}

/// The keys of the JSON object at `path` in `json`, in the order they are written
/// (`serde_json::Value` sorts them).
pub(super) fn key_order(json: &str, path: &[&str]) -> Vec<String> {
    struct At<'p>(&'p [&'p str]);
    impl<'de> DeserializeSeed<'de> for At<'_> {
        type Value = Vec<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
            deserializer.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for At<'_> {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let (mut keys, mut found) = (Vec::new(), Vec::new());
            while let Some(key) = map.next_key::<String>()? {
                match self.0.split_first() {
                    Some((first, rest)) if *first == key => found = map.next_value_seed(At(rest))?,
                    _ => map.next_value::<IgnoredAny>().map(drop)?,
                }
                keys.push(key);
            }
            Ok(if self.0.is_empty() { keys } else { found })
        }
    }
    At(path).deserialize(&mut serde_json::Deserializer::from_str(json)).unwrap()
}

/// Reads `topics` until they hold at least `count` records together.
pub(super) async fn read_at_least(topics: &[String], count: usize, timeout: Duration) -> Vec<(String, Record)> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = read_topics(topics).await;
        if records.len() >= count {
            return records;
        }
        assert!(Instant::now() < deadline, "{} of {count} records in {topics:?} after {timeout:?}: {records:?}", records.len());
    }
}

pub(super) fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8(bytes.expect("a record without a value").to_vec()).unwrap()
}

pub(super) fn debezium(name: &str, schemas: bool) -> DebeziumOptions {
    let mut options = DebeziumOptions::new(name);
    options.schemas = schemas;
    options
}

/// Debezium's documented `customers` example: the same table and statements through a
/// producer writing one copy of the table with Kafka Connect schemas and one without. Keys,
/// create, update and delete events equal the golden files field for field (volatile fields
/// apart), in the documented field order, and the delete is followed by a tombstone.
#[tokio::test]
async fn debeziums_documented_example_events_are_reproduced() {
    let schemas = [unique_name("dbz_golden"), unique_name("dbz_golden")];
    let tables: Vec<Table> = schemas
        .iter()
        .map(|schema| {
            let create = format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id SERIAL, first_name VARCHAR(255) NOT NULL, \
                 last_name VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL, PRIMARY KEY(id))"
            );
            let mut table = Table::new(&format!("{schema}.customers"), create, &[], 1);
            table.key_columns = vec!["id".into()];
            table
        })
        .collect();
    let mut scenario = Scenario::new("dbz_golden", tables).await;
    for schema in &schemas {
        scenario.drop_at_cleanup(format!("SCHEMA {schema} CASCADE"));
    }
    let plain_topic = scenario.topic_map[&format!("{}.customers", schemas[1])].name.clone();
    let producer = scenario
        .builder()
        .output_format(OutputFormat::Debezium(debezium("PostgreSQL_server", true)))
        .topic_format(plain_topic, OutputFormat::Debezium(debezium("PostgreSQL_server", false)))
        .build();
    let running = RunningProducer::start(producer, &scenario.slot).await;
    for schema in &schemas {
        scenario
            .pg
            .batch_execute(&format!(
                "INSERT INTO {schema}.customers (id, first_name, last_name, email) VALUES (1, 'Anne', 'Kretchmar', 'annek@noanswer.org'); \
                 UPDATE {schema}.customers SET first_name = 'Anne Marie' WHERE id = 1; \
                 DELETE FROM {schema}.customers WHERE id = 1"
            ))
            .await
            .unwrap();
    }
    let database: String = scenario.pg.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    for (index, schema) in schemas.iter().enumerate() {
        let with_schemas = index == 0;
        let records = read_at_least(&scenario.topics[index..=index], 4, Duration::from_secs(60)).await;
        assert_eq!(records.len(), 4, "create, update, delete, tombstone: {records:?}");
        // The documented events are of table public.customers in database postgres.
        let normalize = |json: String| {
            json.replace(&format!("\"{schema}\""), "\"public\"")
                .replace(&format!(".{schema}."), ".public.")
                .replace(&format!("\"db\":\"{database}\""), "\"db\":\"postgres\"")
        };
        let suffix = if with_schemas { ".schemas" } else { "" };
        for (_, record) in &records {
            let key = normalize(String::from_utf8(record.key.clone().unwrap()).unwrap());
            assert_eq!(serde_json::from_str::<Value>(&key).unwrap(), serde_json::from_str::<Value>(&fixture(&format!("customers.key{suffix}.json"))).unwrap());
        }
        let values: Vec<String> = records[..3].iter().map(|(_, r)| normalize(text(r.value.as_deref()))).collect();
        let create_schema = serde_json::from_str::<Value>(&fixture("customers.create.schemas.json")).unwrap()["schema"].clone();
        for (value, name) in values.iter().zip(["create", "update", "delete"]) {
            let payload: &[&str] = if with_schemas { &["payload"] } else { &[] };
            let expected_text = fixture(&format!("customers.{name}.json"));
            let whole: Value = serde_json::from_str(value).unwrap();
            let actual = strip_volatile(if with_schemas { whole["payload"].clone() } else { whole });
            let expected = strip_volatile(serde_json::from_str(&expected_text).unwrap());
            assert_eq!(actual, expected, "{name} event, schemas {with_schemas}");
            assert_eq!(key_order(value, payload), key_order(&expected_text, &[]), "{name}: the envelope's field order");
            let source = [payload, &["source"]].concat();
            assert_eq!(key_order(value, &source), key_order(&expected_text, &["source"]), "{name}: the source block's field order");
            if with_schemas {
                let schema: Value = serde_json::from_str::<Value>(value).unwrap()["schema"].clone();
                assert_eq!(schema, create_schema, "{name}: every event of the table has the create event's schema");
            }
        }
        if with_schemas {
            let whole = strip_volatile(serde_json::from_str(&values[0]).unwrap());
            let golden = strip_volatile(serde_json::from_str(&fixture("customers.create.schemas.json")).unwrap());
            assert_eq!(whole, golden, "the documented create event with its schema");
        }
        let (delete, tombstone) = (&records[2].1, &records[3].1);
        assert_eq!((tombstone.value.as_ref(), &tombstone.key, tombstone.partition), (None, &delete.key, delete.partition));
        assert_eq!(tombstone.offset, delete.offset + 1, "the tombstone follows its delete");
    }
    running.stop().await.unwrap();
    scenario.cleanup().await;
}

/// Every type of the README's Debezium type table through a real producer, a row of values and
/// a row of NULLs, checked value by value, with the semantic type names of the schema; and
/// `numeric` in `double` and `string` decimal handling on a second topic.
#[tokio::test]
async fn every_type_in_the_readme_table_is_written_as_debezium_types_it() {
    let t = unique_name("dbz_types");
    let create = format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint, o oid, f4 real, \
         f8 double precision, n numeric(10,2), nv numeric, d date, t0 time, t3 time(3), ttz timetz, ts timestamp, \
         ts3 timestamp(3), tstz timestamptz, iv interval, j json, jb jsonb, u uuid, x xml, by bytea, tx text, \
         vc varchar(10), c char(3), ia int[], ta text[], ip inet)"
    );
    let mut types = Table::new(&t, create, &[], 1);
    types.key_columns = vec!["id".into()];
    let decimals_name = unique_name("dbz_decimals");
    let mut decimals = Table::new(&decimals_name, format!("CREATE TABLE {decimals_name} (id int PRIMARY KEY, n numeric(10,2), nv numeric)"), &[], 1);
    decimals.key_columns = vec!["id".into()];
    let scenario = Scenario::new("dbz_types", vec![types, decimals]).await;
    let mut double = debezium("types_server", false);
    double.decimal_handling = DecimalHandling::Double;
    let mut string = debezium("types_server", false);
    string.decimal_handling = DecimalHandling::String;
    let producer = scenario
        .builder()
        .output_format(OutputFormat::Debezium(debezium("types_server", true)))
        .topic_format(scenario.topic_map[&decimals_name].name.clone(), OutputFormat::Debezium(double))
        .build();
    let running = RunningProducer::start(producer, &scenario.slot).await;
    scenario
        .pg
        .batch_execute(&format!(
            "INSERT INTO {t} VALUES (1, true, -32768, 2147483647, 9223372036854775807, 4000000000, 1.5, -2.25e300, \
             -12345678.91, 12.34567, '2018-06-20', '04:05:06.789012', '04:05:06.789', '01:02:03.25+02', \
             '2018-06-20 15:13:16.945104', '2018-06-20 15:13:16.945', '2018-06-20 15:13:16.945104+02', \
             '1 year 2 mons 3 days 04:05:06.5', '{{\"a\": [1, 2]}}', '{{\"b\":null}}', \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '<a>x</a>', '\\x00ff10', 'say \"hi\"', 'varchar', 'ab', \
             '{{1,NULL,3}}', '{{\"a b\",NULL}}', '192.168.0.1'); \
             INSERT INTO {t} (id) VALUES (2); \
             INSERT INTO {decimals_name} VALUES (1, -12345678.91, 12.34567)"
        ))
        .await
        .unwrap();
    let records = read_at_least(&scenario.topics, 3, Duration::from_secs(60)).await;
    let of_topic = |index: usize| -> Vec<Value> {
        records
            .iter()
            .filter(|(topic, _)| *topic == scenario.topics[index])
            .map(|(_, r)| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect()
    };
    let typed = of_topic(0);
    assert_eq!(typed.len(), 2);
    let after = &typed[0]["payload"]["after"];
    let expected = json!({
        "id": 1, "b": true, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807i64, "o": 4000000000i64,
        "f4": 1.5, "f8": -2.25e300,
        "n": "tmn9LQ==",                                   // -1234567891 unscaled, scale 2
        "nv": {"scale": 5, "value": "EtaH"},              // 1234567, scale 5
        "d": 17702, "t0": 14706789012i64, "t3": 14706789, "ttz": "23:02:03.25Z",
        "ts": 1529507596945104i64, "ts3": 1529507596945i64, "tstz": "2018-06-20T13:13:16.945104Z",
        "iv": 37091106500000i64, "j": "{\"a\": [1, 2]}", "jb": "{\"b\": null}",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "x": "<a>x</a>", "by": "AP8Q", "tx": "say \"hi\"",
        "vc": "varchar", "c": "ab ", "ia": [1, null, 3], "ta": ["a b", null], "ip": "192.168.0.1"
    });
    for (column, value) in expected.as_object().unwrap() {
        assert_eq!(&after[column], value, "column {column}");
    }
    let nulls = typed[1]["payload"]["after"].as_object().unwrap();
    assert!(nulls.iter().all(|(column, value)| column == "id" || value.is_null()), "{nulls:?}");
    let fields = typed[0]["schema"]["fields"][1]["fields"].as_array().unwrap();
    let schema_of = |column: &str| fields.iter().find(|f| f["field"] == column).unwrap().clone();
    assert_eq!(schema_of("id")["optional"], false);
    assert_eq!(schema_of("b"), json!({"type": "boolean", "optional": true, "field": "b"}));
    assert_eq!(schema_of("n")["parameters"], json!({"scale": "2", "connect.decimal.precision": "10"}));
    for (column, name) in [
        ("n", "org.apache.kafka.connect.data.Decimal"),
        ("nv", "io.debezium.data.VariableScaleDecimal"),
        ("d", "io.debezium.time.Date"),
        ("t0", "io.debezium.time.MicroTime"),
        ("t3", "io.debezium.time.Time"),
        ("ttz", "io.debezium.time.ZonedTime"),
        ("ts", "io.debezium.time.MicroTimestamp"),
        ("ts3", "io.debezium.time.Timestamp"),
        ("tstz", "io.debezium.time.ZonedTimestamp"),
        ("iv", "io.debezium.time.MicroDuration"),
        ("j", "io.debezium.data.Json"),
        ("jb", "io.debezium.data.Json"),
        ("u", "io.debezium.data.Uuid"),
        ("x", "io.debezium.data.Xml"),
    ] {
        assert_eq!(schema_of(column)["name"], name, "column {column}");
    }
    assert_eq!(schema_of("by")["type"], "bytes");
    assert_eq!(schema_of("ia")["items"], json!({"type": "int32", "optional": true}));
    assert_eq!(schema_of("ip")["type"], "string");
    let decimal = &of_topic(1)[0]["after"];
    assert_eq!((decimal["n"].as_f64(), decimal["nv"].as_f64()), (Some(-12345678.91), Some(12.34567)), "decimal_handling double");
    running.stop().await.unwrap();

    // The same rows again, read by a producer whose decimal topic writes strings.
    let producer = scenario
        .builder()
        .output_format(OutputFormat::Debezium(debezium("types_server", true)))
        .topic_format(scenario.topic_map[&decimals_name].name.clone(), OutputFormat::Debezium(string))
        .build();
    let running = RunningProducer::start(producer, &scenario.slot).await;
    scenario.pg.batch_execute(&format!("INSERT INTO {decimals_name} VALUES (2, 0.5, 'NaN')")).await.unwrap();
    let records = read_at_least(&scenario.topics[1..], 2, Duration::from_secs(60)).await;
    let value: Value = serde_json::from_slice(records[1].1.value.as_deref().unwrap()).unwrap();
    assert_eq!((value["after"]["n"].as_str(), value["after"]["nv"].as_str()), (Some("0.50"), Some("NaN")), "decimal_handling string");
    running.stop().await.unwrap();
    scenario.cleanup().await;
}

/// Transaction metadata, tombstones and heartbeats together: a transaction over two tables
/// gets BEGIN before its first event and END after its last on `<name>.transaction`, with the
/// event count per table; each event's `transaction` block gives its place; a delete is
/// followed by its tombstone; an update of the key is a delete, tombstone and create; heartbeats on `__debezium-heartbeat.<name>` carry the position
/// confirmed to the slot, which passes the last transaction's commit LSN once it is delivered.
#[tokio::test]
async fn transaction_records_tombstones_and_heartbeats() {
    let (a, table_a) = id_table("dbz_tx_a", 2);
    let (b, table_b) = id_table("dbz_tx_b", 1);
    let scenario = Scenario::new("dbz_tx", vec![table_a, table_b]).await;
    let name = unique_name("dbz_server");
    let mut options = debezium(&name, false);
    options.transaction_metadata = true;
    // Longer than the 2 s of quiet after which `read_topics` stops reading.
    options.heartbeat_interval = Some(Duration::from_secs(3));
    let (transaction_topic, heartbeat_topic) = (options.transaction_topic(), options.heartbeat_topic());
    assert_eq!((transaction_topic.clone(), heartbeat_topic.clone()), (format!("{name}.transaction"), format!("__debezium-heartbeat.{name}")));
    create_topic(&transaction_topic, 1).await;
    create_topic(&heartbeat_topic, 1).await;
    let producer = scenario.builder().output_format(OutputFormat::Debezium(options)).build();
    let running = RunningProducer::start(producer, &scenario.slot).await;
    scenario
        .pg
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {a} VALUES (1, 'x'); INSERT INTO {b} VALUES (1, 'y'); INSERT INTO {a} VALUES (2, 'z'); COMMIT; \
             DELETE FROM {a} WHERE id = 1"
        ))
        .await
        .unwrap();
    // A statement batch after COMMIT is one transaction: the key update gets its own.
    scenario.pg.batch_execute(&format!("UPDATE {a} SET id = 3 WHERE id = 2")).await.unwrap();

    let boundaries = read_at_least(std::slice::from_ref(&transaction_topic), 6, Duration::from_secs(60)).await;
    let boundaries: Vec<Value> = boundaries.iter().map(|(_, r)| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()).collect();
    let statuses: Vec<&str> = boundaries.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["BEGIN", "END", "BEGIN", "END", "BEGIN", "END"]);
    let (first_id, second_id) = (boundaries[0]["id"].as_str().unwrap(), boundaries[2]["id"].as_str().unwrap());
    let third_id = boundaries[4]["id"].as_str().unwrap();
    assert_eq!((boundaries[5]["id"].as_str(), boundaries[5]["event_count"].as_u64()), (Some(third_id), Some(2)));
    assert_eq!(boundaries[1]["id"], first_id);
    assert_eq!((boundaries[0]["event_count"].clone(), boundaries[0]["data_collections"].clone()), (Value::Null, Value::Null));
    assert_eq!(boundaries[1]["event_count"], 3);
    assert_eq!(
        boundaries[1]["data_collections"],
        json!([{"data_collection": format!("public.{a}"), "event_count": 2}, {"data_collection": format!("public.{b}"), "event_count": 1}])
    );
    assert_eq!((boundaries[3]["id"].as_str(), boundaries[3]["event_count"].as_u64()), (Some(second_id), Some(1)));

    let records = read_at_least(&scenario.topics, 8, Duration::from_secs(60)).await;
    let event = |topic: usize, id: i64, op: &str| -> Value {
        records
            .iter()
            .filter(|(t, r)| *t == scenario.topics[topic] && r.value.is_some())
            .map(|(_, r)| serde_json::from_slice::<Value>(r.value.as_deref().unwrap()).unwrap())
            .find(|v| v["op"] == op && (v["after"]["id"] == id || v["before"]["id"] == id))
            .unwrap_or_else(|| panic!("no {op} event of id {id} in {records:?}"))
    };
    let block = |v: Value| v["transaction"].clone();
    assert_eq!(block(event(0, 1, "c")), json!({"id": first_id, "total_order": 1, "data_collection_order": 1}));
    assert_eq!(block(event(1, 1, "c")), json!({"id": first_id, "total_order": 2, "data_collection_order": 1}));
    assert_eq!(block(event(0, 2, "c")), json!({"id": first_id, "total_order": 3, "data_collection_order": 2}));
    assert_eq!(block(event(0, 1, "d")), json!({"id": second_id, "total_order": 1, "data_collection_order": 1}));
    assert_eq!(block(event(0, 2, "d")), json!({"id": third_id, "total_order": 1, "data_collection_order": 1}));
    assert_eq!(block(event(0, 3, "c")), json!({"id": third_id, "total_order": 2, "data_collection_order": 2}));
    let mut deleted_keys = Vec::new();
    for (index, (topic, delete)) in records.iter().enumerate() {
        if delete.value.as_deref().is_some_and(|v| v.windows(8).any(|w| w == br#""op":"d""#)) {
            let tombstone = &records[index + 1].1;
            assert_eq!((&records[index + 1].0, tombstone.value.as_ref(), &tombstone.key), (topic, None, &delete.key));
            assert_eq!((tombstone.partition, tombstone.offset), (delete.partition, delete.offset + 1));
            deleted_keys.push(String::from_utf8(delete.key.clone().unwrap()).unwrap());
        }
    }
    deleted_keys.sort();
    assert_eq!(deleted_keys, [r#"{"id":1}"#, r#"{"id":2}"#]);

    // The transaction id is `<xid>:<commit LSN>`: the last heartbeat passes that LSN.
    let last_commit: u64 = third_id.split(':').nth(1).unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let beats = read_topics(std::slice::from_ref(&heartbeat_topic)).await;
        let last = beats.last().map(|(_, r)| {
            assert_eq!(r.key.as_deref(), Some(format!(r#"{{"serverName":"{name}"}}"#).as_bytes()));
            serde_json::from_slice::<Value>(r.value.as_deref().unwrap()).unwrap()
        });
        if let Some(last) = last.filter(|v| v["lsn"].as_u64().is_some_and(|lsn| lsn >= last_commit)) {
            assert!(last["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
            break;
        }
        assert!(Instant::now() < deadline, "no heartbeat past LSN {last_commit}: {beats:?}");
    }
    running.stop().await.unwrap();
    scenario.cleanup().await;
}

/// The `pgkafka` command cargo built beside this test binary.
fn pgkafka_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join("pgkafka");
    assert!(path.exists(), "{} is missing: build it with `cargo build -p pgkafka --features cli --bin pgkafka`", path.display());
    path
}

/// A Debezium event of an `(id int, v text)` table as the `ReplicationOp` it stands for: the
/// commit LSN from the transaction id (`<xid>:<commit LSN>`, checked against
/// `source.sequence`), the sequence number from `total_order`, the values as text; the key
/// `{"id": n}` as pgkafka's `["n"]`. Re-sent events differ in `ts_ms` only, which this leaves out.
fn as_replication_op(table: &str, record: &Record) -> Record {
    let event: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
    let tx = &event["transaction"];
    let lsn: u64 = tx["id"].as_str().unwrap().split(':').nth(1).unwrap().parse().unwrap();
    // `source.sequence`'s first element is the LSN just below the commit, in every run: what a
    // consumer orders by (pgkafka's takes lsn = sequence[0] + 1).
    let sequence: Vec<Option<String>> = serde_json::from_str(event["source"]["sequence"].as_str().unwrap()).unwrap();
    assert_eq!(sequence[0].as_deref().map(|s| s.parse::<u64>().unwrap() + 1), Some(lsn), "{event}");
    let seq_id = tx["total_order"].as_u64().unwrap() - 1;
    let row = |row: &Value| -> Vec<Option<String>> {
        ["id", "v"].iter().map(|c| match &row[c] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }).collect()
    };
    let op = match event["op"].as_str().unwrap() {
        "c" => pgkafka::Op::Insert(row(&event["after"])),
        "u" => pgkafka::Op::Update((row(&event["before"]), row(&event["after"]))),
        "d" => pgkafka::Op::Delete(row(&event["before"])),
        other => panic!("unexpected op {other}"),
    };
    let op = pgkafka::ReplicationOp { table_name: table.to_owned(), col_names: vec!["id".into(), "v".into()], lsn, seq_id, op };
    let key: Value = serde_json::from_slice(record.key.as_deref().unwrap()).unwrap();
    let key = pgkafka::key::encode_key([Some(key["id"].to_string().as_str())]);
    Record { key: Some(key), value: Some(serde_json::to_vec(&op).unwrap()), ..record.clone() }
}

/// The Debezium format keeps the producer's guarantees on the bad day: the `pgkafka` command
/// writing Debezium events is SIGKILLed three times while transactions of inserts, updates and
/// deletes commit; after the last restart every change the slot holds is in the topic, once or
/// re-sent, in commit order within each partition, each key in one partition, each event equal
/// to the change (the same check as the pgkafka format's crash test, through the transaction
/// block's commit LSN and order).
#[tokio::test]
async fn debezium_events_survive_sigkill_of_the_producer() {
    let (t, table) = id_table("dbz_crash", 3);
    let mut scenario = Scenario::new("dbz_crash", vec![table]).await;
    let name = unique_name("dbz_crash_server");
    create_topic(&format!("{name}.transaction"), 1).await;
    let dir = std::env::temp_dir().join(unique_name("dbz_crash"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pgkafka.json");
    let file = json!({
        "connection_string": pgkafka_tests::env().database_url, "brokers": pgkafka_tests::env().brokers,
        "slot": scenario.slot, "publication": scenario.publication, "status_interval_ms": 100,
        "topics": { &t: { "name": scenario.topics[0], "partition_key": [] } },
        "format": "debezium",
        "debezium": { "name": name, "schemas": false, "tombstones": false, "transaction_metadata": true },
    });
    std::fs::write(&config, serde_json::to_vec(&file).unwrap()).unwrap();
    let spawn = || {
        std::process::Command::new(pgkafka_binary())
            .arg("--config")
            .arg(&config)
            .env_remove("PGKAFKA_CONNECTION_STRING")
            .env_remove("PGKAFKA_BROKERS")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    pgkafka_tests::wait_for("the producer to stream", Duration::from_secs(30), || async {
        pgkafka_tests::slots::slot_active_pid(&scenario.pg, &scenario.slot).await
    })
    .await;
    scenario.ensure_reference().await;

    let writer = {
        let t = t.clone();
        tokio::spawn(async move {
            let pg = pgkafka_tests::pg_client().await;
            let mut rng = pgkafka_tests::rng::Rng::from_env("debezium_events_survive_sigkill_of_the_producer");
            let mut live: Vec<u64> = Vec::new();
            for next in 0..400u64 {
                let mut sql = String::from("BEGIN;");
                for _ in 0..rng.range(1, 4) {
                    match (rng.range(0, 3), live.is_empty()) {
                        (0, false) => {
                            let id = live.swap_remove(rng.range(0, live.len() as u64) as usize);
                            sql.push_str(&format!("DELETE FROM {t} WHERE id = {id};"));
                        }
                        (1, false) => {
                            let id = live[rng.range(0, live.len() as u64) as usize];
                            sql.push_str(&format!("UPDATE {t} SET v = 'u{next}' WHERE id = {id};"));
                        }
                        _ => {
                            let id = next * 10 + live.len() as u64 % 10;
                            if !live.contains(&id) {
                                live.push(id);
                                sql.push_str(&format!("INSERT INTO {t} VALUES ({id}, 'v{next}');"));
                            }
                        }
                    }
                }
                sql.push_str("COMMIT;");
                pg.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn();
    }
    writer.await.unwrap();

    let expected = all_ops(&scenario.expected().await);
    let deadline = Instant::now() + Duration::from_secs(90);
    let records = loop {
        let records: Vec<(String, Record)> =
            read_topics(&scenario.topics).await.into_iter().map(|(topic, r)| (topic, as_replication_op(&t, &r))).collect();
        let ids: std::collections::HashSet<(u64, u64)> = records.iter().map(|(_, r)| { let op = r.op(); (op.lsn, op.seq_id) }).collect();
        if expected.iter().all(|op| ids.contains(&(op.lsn, op.seq_id))) {
            break records;
        }
        assert!(Instant::now() < deadline, "{} of {} changes arrived", ids.len(), expected.len());
    };
    let delivery = pgkafka_tests::delivery::verify_delivery(&records, &expected, &scenario.routes);
    assert_eq!(delivery.distinct, expected.len());
    child.kill().unwrap();
    child.wait().unwrap();
    scenario.cleanup().await;
}
