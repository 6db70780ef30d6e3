//! The checks `start()` makes before streaming: each problem is an error naming the table or
//! column and the fix, returned at once (not retried).

use std::time::Duration;

use pgkafka::{ProducerError, TopicInfo};
use pgkafka_tests::unique_name;

use super::{Scenario, Table};

/// Runs the scenario's producer and returns its error; it must fail before streaming.
async fn startup_error(sc: &Scenario) -> String {
    startup_error_of(sc, |e| matches!(e, ProducerError::Schema(_)), "ProducerError::Schema").await
}

async fn startup_error_of(sc: &Scenario, kind: fn(&ProducerError) -> bool, kind_name: &str) -> String {
    let result = tokio::time::timeout(Duration::from_secs(60), sc.producer().start())
        .await
        .expect("start() kept going instead of reporting the problem");
    let error = result.expect_err("start() accepted a configuration it must reject");
    assert!(kind(&error), "expected {kind_name}, got {error:?}");
    let message = error.to_string();
    println!("{message}");
    message
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "the error does not mention {part:?}:\n{message}");
    }
}

fn simple_table(prefix: &str) -> (String, Table) {
    let t = unique_name(prefix);
    let table = Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, org int NOT NULL, opt int)"), &["org"], 1);
    (t, table)
}

#[tokio::test]
async fn startup_fails_when_the_publication_is_missing() {
    let (_, table) = simple_table("p_v_nopub");
    let mut sc = Scenario::new("p_v_nopub", vec![table]).await;
    let real = sc.publication.clone();
    sc.publication = unique_name("p_v_missing_pub");
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&sc.publication, "CREATE PUBLICATION"]);
    sc.publication = real;
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_a_published_table_without_a_topic_map_entry() {
    let (_, table) = simple_table("p_v_mapped");
    let (unmapped, other) = simple_table("p_v_unmapped");
    let mut sc = Scenario::new("p_v_unmapped", vec![table, other]).await;
    sc.topic_map.remove(&unmapped);
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&unmapped, "topic map"]);
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_a_topic_map_entry_whose_table_is_not_published() {
    let (_, table) = simple_table("p_v_pub");
    let mut sc = Scenario::new("p_v_notpub", vec![table]).await;
    let (stray, stray_table) = simple_table("p_v_stray");
    sc.pg.batch_execute(&stray_table.create).await.unwrap();
    sc.pg.batch_execute(&format!("ALTER TABLE {stray} REPLICA IDENTITY FULL")).await.unwrap();
    sc.topic_map.insert(stray.clone(), TopicInfo::new(unique_name("p_v_stray_topic"), ["org"]));
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&stray, "ALTER PUBLICATION", "ADD TABLE"]);
    sc.pg.batch_execute(&format!("DROP TABLE {stray}")).await.unwrap();
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_a_partition_key_column_that_does_not_exist() {
    let (t, table) = simple_table("p_v_nocol");
    let mut sc = Scenario::new("p_v_nocol", vec![table]).await;
    sc.topic_map.get_mut(&t).unwrap().partition_key = vec!["organisation".into()];
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&t, "organisation", "does not exist"]);
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_a_nullable_partition_key_column() {
    let (t, table) = simple_table("p_v_null");
    let mut sc = Scenario::new("p_v_null", vec![table]).await;
    sc.topic_map.get_mut(&t).unwrap().partition_key = vec!["org".into(), "opt".into()];
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&t, "\"opt\"", "SET NOT NULL"]);
    assert!(!message.contains("\"org\""), "org is NOT NULL and must not be reported:\n{message}");
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_when_replica_identity_is_not_full() {
    let (t, table) = simple_table("p_v_ident");
    let sc = Scenario::new("p_v_ident", vec![table]).await;
    sc.pg.batch_execute(&format!("ALTER TABLE {t} REPLICA IDENTITY DEFAULT")).await.unwrap();
    let message = startup_error(&sc).await;
    let fix = [
        format!("ALTER TABLE {t} REPLICA IDENTITY FULL"),
        format!("ALTER TABLE public.{t} REPLICA IDENTITY FULL"),
        format!("ALTER TABLE \"public\".\"{t}\" REPLICA IDENTITY FULL"),
    ];
    assert!(fix.iter().any(|f| message.contains(f.as_str())), "the error does not show the fix {:?}:\n{message}", fix[0]);
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_an_empty_partition_key_on_a_table_without_primary_key() {
    let t = unique_name("p_v_nopk");
    let table = Table::new(&t, format!("CREATE TABLE {t} (id int NOT NULL, v text)"), &[], 1);
    let sc = Scenario::new("p_v_nopk", vec![table]).await;
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&t, "primary key", "partition_key"]);
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_for_an_existing_slot_of_another_plugin() {
    let (_, table) = simple_table("p_v_plugin");
    let sc = Scenario::new("p_v_plugin", vec![table]).await;
    sc.pg.execute("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", &[&sc.slot]).await.unwrap();
    let message = startup_error_of(&sc, |e| matches!(e, ProducerError::Config(_)), "ProducerError::Config").await;
    assert_mentions(&message, &[&sc.slot, "pgoutput", "pg_drop_replication_slot"]);
    sc.cleanup().await;
}

#[tokio::test]
async fn startup_fails_when_the_publication_publishes_only_some_columns() {
    let (t, table) = simple_table("p_v_collist");
    let sc = Scenario::new("p_v_collist", vec![table]).await;
    sc.pg.batch_execute(&format!("ALTER PUBLICATION {} SET TABLE {t} (id, opt)", sc.publication)).await.unwrap();
    let message = startup_error(&sc).await;
    assert_mentions(&message, &[&t, "org", "publishes only some columns", "ALTER PUBLICATION"]);
    sc.cleanup().await;
}
