//! What the producer writes for each kind of change: values, columns, keys, LSNs, seq_ids.

use std::collections::BTreeSet;
use std::time::Duration;

use pgkafka::{Op, ReplicationOp};
use pgkafka_tests::producing::Rng;
use pgkafka_tests::unique_name;

use super::{row, Scenario, Table};

const DELIVERY: Duration = Duration::from_secs(90);

/// Runs each string as its own transaction (one string of several statements would be one
/// implicit transaction).
pub(crate) async fn run_each(pg: &tokio_postgres::Client, statements: &[String]) {
    for sql in statements {
        pg.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Ops grouped by transaction (by lsn), in commit order.
fn by_transaction(ops: &[ReplicationOp]) -> Vec<Vec<&ReplicationOp>> {
    let mut txs: Vec<Vec<&ReplicationOp>> = Vec::new();
    for op in ops {
        match txs.last_mut() {
            Some(tx) if tx[0].lsn == op.lsn => tx.push(op),
            _ => txs.push(vec![op]),
        }
    }
    txs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_type_arrives_once_with_commit_lsn_seq_id_and_key() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_ops");
    let mut sc = Scenario::new(
        "p_ops",
        vec![Table::new(
            &t,
            format!("CREATE TABLE {t} (id int NOT NULL PRIMARY KEY, region text NOT NULL, note text, qty int)"),
            &["region", "id"],
            3,
        )],
    )
    .await;
    let producer = sc.start().await;
    let plugin: String = sc
        .pg
        .query_one("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1", &[&sc.slot])
        .await
        .expect("the producer did not create its slot")
        .get(0);
    assert_eq!(plugin, "pgoutput");
    run_each(&sc.pg, &[
        format!("BEGIN; INSERT INTO {t} VALUES (1, 'eu', 'first', 10); INSERT INTO {t} VALUES (2, 'us', NULL, NULL); COMMIT"),
        format!("UPDATE {t} SET qty = 11 WHERE id = 1"),
        format!("UPDATE {t} SET region = 'ap' WHERE id = 2"),
        format!("DELETE FROM {t} WHERE id = 1"),
        format!("BEGIN; INSERT INTO {t} VALUES (3, 'eu', 'x', 1); UPDATE {t} SET note = 'y' WHERE id = 3;
                 DELETE FROM {t} WHERE id = 3; COMMIT"),
    ])
    .await;
    let (txs, ops) = sc.delivered_once(DELIVERY).await;
    assert!(!producer.is_finished(), "the producer stopped while streaming");

    // Independently of the reference decoder: exactly these changes, in these transactions.
    let r1 = row(&[Some("1"), Some("eu"), Some("first"), Some("10")]);
    let r1b = row(&[Some("1"), Some("eu"), Some("first"), Some("11")]);
    let r2 = row(&[Some("2"), Some("us"), None, None]);
    let r2b = row(&[Some("2"), Some("ap"), None, None]);
    let r3 = row(&[Some("3"), Some("eu"), Some("x"), Some("1")]);
    let r3b = row(&[Some("3"), Some("eu"), Some("y"), Some("1")]);
    let want: Vec<Vec<Op>> = vec![
        vec![Op::Insert(r1.clone()), Op::Insert(r2.clone())],
        vec![Op::Update((r1.clone(), r1b.clone()))],
        vec![Op::Update((r2, r2b))],
        vec![Op::Delete(r1b)],
        vec![Op::Insert(r3.clone()), Op::Update((r3, r3b.clone())), Op::Delete(r3b)],
    ];
    let got = by_transaction(&ops);
    assert_eq!(got.len(), want.len(), "transactions: {ops:#?}");
    for (i, (tx, want)) in got.iter().zip(&want).enumerate() {
        let kinds: Vec<&Op> = tx.iter().map(|op| &op.op).collect();
        assert_eq!(kinds, want.iter().collect::<Vec<_>>(), "transaction {i}");
        for (seq, op) in tx.iter().enumerate() {
            assert_eq!(op.seq_id, seq as u64, "transaction {i}: seq_id counts from 0 by 1");
            assert_eq!(op.table_name, t);
            assert_eq!(op.col_names, ["id", "region", "note", "qty"]);
            // The commit LSN, as pgoutput's Begin gives it; not the end of the commit record.
            assert_eq!(op.lsn, txs[i].commit_lsn, "transaction {i}: lsn is not the commit LSN");
            assert_ne!(op.lsn, txs[i].end_lsn);
        }
    }
    assert!(got.windows(2).all(|w| w[0][0].lsn < w[1][0].lsn), "lsn must grow with commit order");
    // Keys: the new row's values for insert/update (the moved row 2 is keyed "ap"), old row's for delete.
    let records = sc.read_all().await;
    let keys: BTreeSet<String> = records.iter().map(|(_, r)| r.key_text().unwrap()).collect();
    let want_keys: BTreeSet<String> =
        [r#"["eu","1"]"#, r#"["us","2"]"#, r#"["ap","2"]"#, r#"["eu","3"]"#].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(keys, want_keys);
    let update_2 = records.iter().find(|(_, r)| matches!(&r.op().op, Op::Update((o, _)) if o[1].as_deref() == Some("us"))).unwrap();
    assert_eq!(update_2.1.key_text().unwrap(), r#"["ap","2"]"#, "an update is keyed by its new row");

    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_table_transaction_numbers_its_changes_contiguously_across_tables() {
    pgkafka_tests::init_tracing();
    let a = unique_name("p_mt_a");
    let b = unique_name("p_mt_b");
    let c = unique_name("p_mt_c");
    let tables = [&a, &b, &c]
        .iter()
        .map(|t| Table::new(t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &[], 2))
        .map(|mut t| {
            t.key_columns = vec!["id".into()];
            t
        })
        .collect();
    let mut sc = Scenario::new("p_mt", tables).await;
    let producer = sc.start().await;
    sc.pg
        .batch_execute(&format!(
            "BEGIN;
               INSERT INTO {a} VALUES (1, 'a1');
               INSERT INTO {b} VALUES (1, 'b1');
               UPDATE {a} SET v = 'a1+' WHERE id = 1;
               INSERT INTO {c} VALUES (1, 'c1'), (2, 'c2');
               DELETE FROM {b} WHERE id = 1;
               UPDATE {c} SET v = v || '+';
             COMMIT;"
        ))
        .await
        .unwrap();
    sc.pg.batch_execute(&format!("BEGIN; INSERT INTO {b} VALUES (2, 'b2'); INSERT INTO {a} VALUES (2, 'a2'); COMMIT")).await.unwrap();
    let (txs, ops) = sc.delivered_once(DELIVERY).await;
    let got = by_transaction(&ops);
    let summary: Vec<Vec<(u64, String, String)>> = got
        .iter()
        .map(|tx| tx.iter().map(|op| (op.seq_id, op.table_name.clone(), op.op.kind().to_string())).collect())
        .collect();
    let w = |seq: u64, t: &str, k: &str| (seq, t.to_owned(), k.to_owned());
    assert_eq!(
        summary,
        vec![
            vec![
                w(0, &a, "insert"),
                w(1, &b, "insert"),
                w(2, &a, "update"),
                w(3, &c, "insert"),
                w(4, &c, "insert"),
                w(5, &b, "delete"),
                w(6, &c, "update"),
                w(7, &c, "update"),
            ],
            vec![w(0, &b, "insert"), w(1, &a, "insert")],
        ]
    );
    assert_eq!(got[0][0].lsn, txs[0].commit_lsn);
    assert_eq!(got[1][0].lsn, txs[1].commit_lsn);
    assert!(got[0][0].lsn < got[1][0].lsn);
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_values_nulls_unicode_and_punctuation_arrive_as_postgres_prints_them() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_text");
    let cols = r#"id, t, vc, n, b, by, arr, j, u, d, "Grüße ""q""", f"#;
    let mut sc = Scenario::new(
        "p_text",
        vec![Table::new(
            &t,
            format!(
                r#"CREATE TABLE {t} (id int PRIMARY KEY, t text, vc varchar(50), n numeric, b boolean, by bytea,
                    arr text[], j jsonb, u uuid, d date, "Grüße ""q""" text, f float8)"#
            ),
            &["id"],
            2,
        )],
    )
    .await;
    let producer = sc.start().await;
    let tricky = "a,b \"c\" {d} [e] \\f 'g'\nline2\ttab";
    let unicode = "日本語 ✓ 🚀 e\u{301} עברית";
    sc.pg
        .execute(
            &format!(
                "INSERT INTO {t} ({cols}) VALUES (1, $1, $2, 12345678901234567890.000000000001, true, '\\x00ff'::bytea,
                 ARRAY['a,b', 'c\"d', NULL, '{{x}}', ''], '{{\"k\": \"v,\\\"w\\\"\", \"n\": [1, null]}}',
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', 'null', 0.1)"
            ),
            &[&tricky, &unicode],
        )
        .await
        .unwrap();
    sc.pg.batch_execute(&format!("INSERT INTO {t} (id, t, vc) VALUES (2, '', NULL)")).await.unwrap();
    let printed = |id: i32| {
        let pg = &sc.pg;
        let t = t.clone();
        async move {
            // Each column as its type's output function prints it.
            let sql = format!(
                r#"SELECT ARRAY[id::text, t::text, vc::text, n::text, boolout(b)::text, by::text, arr::text, j::text, u::text,
                   d::text, "Grüße ""q"""::text, f::text] FROM {t} WHERE id = $1"#
            );
            pg.query_one(&sql, &[&id]).await.unwrap().get::<_, Vec<Option<String>>>(0)
        }
    };
    let row1 = printed(1).await;
    let row2 = printed(2).await;
    run_each(&sc.pg, &[
        format!("UPDATE {t} SET t = NULL, arr = NULL, j = 'null', vc = 'now set' WHERE id = 1"),
        format!("DELETE FROM {t} WHERE id = 2"),
    ])
    .await;
    let row1b = printed(1).await;
    let (_, ops) = sc.delivered_once(DELIVERY).await;

    assert_eq!(
        ops[0].col_names,
        ["id", "t", "vc", "n", "b", "by", "arr", "j", "u", "d", "Grüße \"q\"", "f"],
        "column names as the table has them, quotes and unicode included"
    );
    assert_eq!(ops.iter().map(|o| &o.op).collect::<Vec<_>>(), [
        &Op::Insert(row1.clone()),
        &Op::Insert(row2.clone()),
        &Op::Update((row1.clone(), row1b.clone())),
        &Op::Delete(row2.clone()),
    ]);
    // Spot checks against literals, so the comparison above cannot pass by both sides being wrong.
    assert_eq!(row1[1].as_deref(), Some(tricky));
    assert_eq!(row1[2].as_deref(), Some(unicode));
    assert_eq!(row1[3].as_deref(), Some("12345678901234567890.000000000001"));
    // The type's output function, as pgoutput sends it: "t". (`b::text` would print "true": for
    // boolean the cast and the output function differ.)
    assert_eq!(row1[4].as_deref(), Some("t"));
    assert_eq!(row1[5].as_deref(), Some("\\x00ff"));
    assert_eq!(row1[6].as_deref(), Some(r#"{"a,b","c\"d",NULL,"{x}",""}"#));
    assert_eq!(row1[7].as_deref(), Some(r#"{"k": "v,\"w\"", "n": [1, null]}"#));
    assert_eq!(row1[10].as_deref(), Some("null"), "the text 'null' is not NULL");
    assert_eq!(row2, [Some("2"), Some(""), None, None, None, None, None, None, None, None, None, None]
        .iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>(), "'' and NULL stay distinct");
    assert_eq!(row1b[1], None);
    assert_eq!(row1b[7].as_deref(), Some("null"), "JSON null is the text null, SQL NULL is null");
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_values_arrive_whole_when_updated_and_when_left_unchanged() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_toast");
    let mut sc = Scenario::new(
        "p_toast",
        vec![Table::new(
            &t,
            format!(
                "CREATE TABLE {t} (id int PRIMARY KEY, big text, small int, big2 text);
                 ALTER TABLE {t} ALTER COLUMN big SET STORAGE EXTERNAL, ALTER COLUMN big2 SET STORAGE EXTERNAL"
            ),
            &["id"],
            1,
        )],
    )
    .await;
    let producer = sc.start().await;
    let mut rng = Rng::new(7);
    let mut random_text = |len: usize| -> String {
        let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789 ,\"{}é✓".chars().collect();
        (0..len).map(|_| alphabet[rng.range(0, alphabet.len() as u64) as usize]).collect()
    };
    let big = random_text(12_000);
    let big2 = random_text(11_000);
    let big_new = random_text(15_000);
    sc.pg.execute(&format!("INSERT INTO {t} VALUES (1, $1, 1, $2)"), &[&big, &big2]).await.unwrap();
    sc.pg.batch_execute(&format!("UPDATE {t} SET small = 2 WHERE id = 1")).await.unwrap();
    sc.pg.execute(&format!("UPDATE {t} SET big = $1 WHERE id = 1"), &[&big_new]).await.unwrap();
    sc.pg.batch_execute(&format!("DELETE FROM {t} WHERE id = 1")).await.unwrap();
    let (txs, ops) = sc.delivered_once(DELIVERY).await;

    // The test exercises what it should: PostgreSQL sent the untouched big values as "unchanged".
    assert!(
        txs[1].unchanged_toast.iter().any(|(_, c)| c == "big") && txs[1].unchanged_toast.iter().any(|(_, c)| c == "big2"),
        "PostgreSQL did not send unchanged TOAST values; the test does not test what it should: {:?}",
        txs[1].unchanged_toast
    );
    assert!(txs[2].unchanged_toast.iter().any(|(_, c)| c == "big2"));
    let v = |id: &str, b: &str, small: &str, b2: &str| vec![Some(id.to_owned()), Some(b.to_owned()), Some(small.to_owned()), Some(b2.to_owned())];
    let want = [
        Op::Insert(v("1", &big, "1", &big2)),
        Op::Update((v("1", &big, "1", &big2), v("1", &big, "2", &big2))),
        Op::Update((v("1", &big, "2", &big2), v("1", &big_new, "2", &big2))),
        Op::Delete(v("1", &big_new, "2", &big2)),
    ];
    assert_eq!(ops.len(), want.len());
    for (i, (op, want)) in ops.iter().zip(&want).enumerate() {
        assert!(&op.op == want, "change {i} ({}) does not carry the whole TOASTed values", op.op.kind());
    }
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_and_dropped_columns_show_in_the_following_records_without_a_restart() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_ddl");
    let mut sc = Scenario::new(
        "p_ddl",
        vec![Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, a text, b int)"), &["id"], 2)],
    )
    .await;
    let producer = sc.start().await;
    run_each(&sc.pg, &[
        format!("INSERT INTO {t} VALUES (1, 'x', 1)"),
        format!("ALTER TABLE {t} ADD COLUMN c text DEFAULT 'dflt'"),
        format!("INSERT INTO {t} VALUES (2, 'y', 2, 'z')"),
        format!("UPDATE {t} SET b = 10 WHERE id = 1"),
        format!("ALTER TABLE {t} DROP COLUMN a"),
        format!("INSERT INTO {t} VALUES (3, 3, 'w')"),
        format!("BEGIN; INSERT INTO {t} VALUES (4, 4, 'v'); ALTER TABLE {t} ADD COLUMN d int;
                 INSERT INTO {t} VALUES (5, 5, 'u', 6); COMMIT"),
        format!("DELETE FROM {t} WHERE id = 2"),
    ])
    .await;
    let (_, ops) = sc.delivered_once(DELIVERY).await;
    assert!(!producer.is_finished(), "the producer stopped on a schema change");
    let got: Vec<(Vec<String>, Op)> = ops.iter().map(|o| (o.col_names.clone(), o.op.clone())).collect();
    let cols = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (cols(&["id", "a", "b"]), Op::Insert(row(&[Some("1"), Some("x"), Some("1")]))),
            (cols(&["id", "a", "b", "c"]), Op::Insert(row(&[Some("2"), Some("y"), Some("2"), Some("z")]))),
            (
                cols(&["id", "a", "b", "c"]),
                Op::Update((
                    row(&[Some("1"), Some("x"), Some("1"), Some("dflt")]),
                    row(&[Some("1"), Some("x"), Some("10"), Some("dflt")])
                ))
            ),
            (cols(&["id", "b", "c"]), Op::Insert(row(&[Some("3"), Some("3"), Some("w")]))),
            (cols(&["id", "b", "c"]), Op::Insert(row(&[Some("4"), Some("4"), Some("v")]))),
            (cols(&["id", "b", "c", "d"]), Op::Insert(row(&[Some("5"), Some("5"), Some("u"), Some("6")]))),
            (cols(&["id", "b", "c", "d"]), Op::Delete(row(&[Some("2"), Some("2"), Some("z"), None]))),
        ]
    );
    // The two inserts around the ALTER are one transaction: one lsn, seq_id 0 and 1.
    assert_eq!((ops[4].lsn, ops[4].seq_id, ops[5].seq_id), (ops[5].lsn, 0, 1));
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_one_key_go_to_one_partition_in_commit_order() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_part");
    let mut sc = Scenario::new(
        "p_part",
        vec![Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, org int NOT NULL, v int)"), &["org"], 4)],
    )
    .await;
    let producer = sc.start().await;
    let mut rng = Rng::from_env("partition routing");
    sc.pg
        .batch_execute(&format!("INSERT INTO {t} SELECT g, g % 12, 0 FROM generate_series(1, 60) g"))
        .await
        .unwrap();
    for _ in 0..40 {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.range(1, 5) {
            let id = rng.range(1, 61);
            if rng.chance(0.1) {
                // Moves the row to another key: the update is keyed by the new row.
                sql.push_str(&format!("UPDATE {t} SET org = {} WHERE id = {id};", rng.range(0, 12)));
            } else {
                sql.push_str(&format!("UPDATE {t} SET v = v + 1 WHERE id = {id};"));
            }
        }
        sql.push_str("COMMIT;");
        sc.pg.batch_execute(&sql).await.unwrap();
    }
    sc.pg.batch_execute(&format!("DELETE FROM {t} WHERE id % 5 = 0")).await.unwrap();
    // verify_delivery checks: keys are ["<org>"], one partition per key, commit order per partition.
    let (txs, records, delivery) = sc.delivered(DELIVERY).await;
    assert_eq!(delivery.duplicates, 0);
    assert!(txs.len() >= 42);
    assert!(delivery.partitions_used[&sc.topics[0]] > 1, "12 keys all went to one of 4 partitions: not partitioned by key");
    let per_key: std::collections::HashMap<String, BTreeSet<i32>> =
        records.iter().fold(Default::default(), |mut m, (_, r)| {
            m.entry(r.key_text().unwrap()).or_default().insert(r.partition);
            m
        });
    assert_eq!(per_key.len(), 12, "keys: {:?}", per_key.keys());
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_tables_and_primary_key_partitioning() {
    pgkafka_tests::init_tracing();
    let schema = unique_name("p_sch");
    let name = unique_name("p_items");
    let qualified = format!("{schema}.{name}");
    let mut public = Table::new(&name, format!("CREATE TABLE {name} (id int PRIMARY KEY, v text)"), &[], 2);
    public.key_columns = vec!["id".into()];
    // Column order (a, b) differs from the primary key's order (b, a): the key follows the key.
    let mut other = Table::new(
        &qualified,
        format!("CREATE SCHEMA {schema}; CREATE TABLE {qualified} (a int, b text, note text, PRIMARY KEY (b, a))"),
        &[],
        2,
    );
    other.key_columns = vec!["b".into(), "a".into()];
    let mut sc = Scenario::new("p_sch", vec![public, other]).await;
    sc.drop_at_cleanup(format!("SCHEMA {schema} CASCADE"));
    let producer = sc.start().await;
    run_each(&sc.pg, &[
        format!("BEGIN; INSERT INTO {name} VALUES (1, 'public'); INSERT INTO {qualified} VALUES (7, 'k', 'other'); COMMIT"),
        format!("UPDATE {qualified} SET note = 'changed'"),
        format!("DELETE FROM {name}"),
    ])
    .await;
    let (_, ops) = sc.delivered_once(DELIVERY).await;
    let names: Vec<&str> = ops.iter().map(|o| o.table_name.as_str()).collect();
    assert_eq!(names, [name.as_str(), qualified.as_str(), qualified.as_str(), name.as_str()]);
    let records = sc.read_all().await;
    let other_keys: BTreeSet<String> =
        records.iter().filter(|(topic, _)| *topic == sc.topics[1]).map(|(_, r)| r.key_text().unwrap()).collect();
    assert_eq!(other_keys, [r#"["k","7"]"#.to_owned()].into_iter().collect(), "key = primary key columns in key order");
    let public_keys: BTreeSet<String> =
        records.iter().filter(|(topic, _)| *topic == sc.topics[0]).map(|(_, r)| r.key_text().unwrap()).collect();
    assert_eq!(public_keys, [r#"["1"]"#.to_owned()].into_iter().collect());
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_in_flight_window_still_delivers_everything_once_in_order() {
    pgkafka_tests::init_tracing();
    let a = unique_name("p_win_a");
    let b = unique_name("p_win_b");
    let mut ta = Table::new(&a, format!("CREATE TABLE {a} (id int PRIMARY KEY, v int)"), &[], 3);
    ta.key_columns = vec!["id".into()];
    let mut tb = Table::new(&b, format!("CREATE TABLE {b} (id int PRIMARY KEY, v int)"), &[], 2);
    tb.key_columns = vec!["id".into()];
    let mut sc = Scenario::new("p_win", vec![ta, tb]).await;
    // At most 3 unacknowledged messages: reading pauses mid-transaction again and again.
    let producer = pgkafka_tests::producing::RunningProducer::start(sc.builder().max_in_flight(3).build(), &sc.slot).await;
    sc.ensure_reference().await;
    sc.pg
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {a} SELECT g, g FROM generate_series(1, 300) g;
                    INSERT INTO {b} SELECT g, g FROM generate_series(1, 200) g;
                    UPDATE {a} SET v = v + 1 WHERE id % 3 = 0; COMMIT"
        ))
        .await
        .unwrap();
    run_each(&sc.pg, &[format!("DELETE FROM {b} WHERE id <= 50"), format!("UPDATE {a} SET v = 0 WHERE id = 7")]).await;
    let (txs, ops) = sc.delivered_once(DELIVERY).await;
    assert_eq!(txs.len(), 3);
    assert_eq!(ops.len(), 300 + 200 + 100 + 50 + 1);
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

/// Every record says where it came from: Kafka headers carry the database system identifier and
/// timeline (as `IDENTIFY_SYSTEM` reports them) and the slot, while the JSON value stays the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_carries_the_origin_headers_system_id_timeline_and_slot() {
    use pgkafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use pgkafka::rdkafka::message::{Headers as _, Message as _};
    use pgkafka::rdkafka::{Offset, TopicPartitionList};

    pgkafka_tests::init_tracing();
    let t = unique_name("p_origin");
    let mut sc = Scenario::new(
        "p_origin",
        vec![Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &["id"], 1)],
    )
    .await;
    let producer = sc.start().await;
    run_each(&sc.pg, &[format!("INSERT INTO {t} VALUES (1, 'a')"), format!("INSERT INTO {t} VALUES (2, 'b')")]).await;
    let (_, ops) = sc.delivered_once(DELIVERY).await;
    assert_eq!(ops.len(), 2);
    let system_id: String =
        sc.pg.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await.unwrap().get(0);
    let timeline: String =
        sc.pg.query_one("SELECT timeline_id::text FROM pg_control_checkpoint()", &[]).await.unwrap().get(0);

    let topic = sc.topics[0].clone();
    let headers: Vec<Vec<(String, String)>> = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = pgkafka_tests::kafka_config()
            .set("group.id", unique_name("p_origin_reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let mut all = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while all.len() < 2 && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                let headers = message.headers().map_or_else(Vec::new, |headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap()))
                        .collect()
                });
                all.push(headers);
            }
        }
        all
    })
    .await
    .unwrap();
    let want = vec![
        (pgkafka::headers::SYSTEM_ID.to_owned(), system_id),
        (pgkafka::headers::TIMELINE.to_owned(), timeline),
        (pgkafka::headers::SLOT.to_owned(), sc.slot.clone()),
    ];
    assert_eq!(headers, vec![want.clone(), want], "the records' headers");
    producer.stop().await.unwrap();
    sc.cleanup().await;
}
