//! TLS (`sslmode=require`, the scripts' self-signed certificate) with SCRAM-SHA-256 password auth.
//! The scripts' SCRAM user may only connect over TLS with its password (pg_hba `hostssl ...
//! scram-sha-256`, plain `host` rejected), on both the control and the replication connection.

use std::time::Duration;

use pgkafka::{Producer, ProducerError};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::{env, unique_name};

use super::{Scenario, Table};

fn scram_url() -> String {
    env().scram_database_url.clone().unwrap_or_else(|| {
        panic!(
            "PGKAFKA_TEST_SCRAM_DATABASE_URL is not set: this test needs the TLS + SCRAM user that \
             scripts/services.sh creates (sslmode=require, self-signed certificate)"
        )
    })
}

/// A producer connecting over TLS with SCRAM password auth: its walsender is the SCRAM user's over
/// TLS, and the changes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_tls_with_scram_password_auth() {
    pgkafka_tests::init_tracing();
    let url = scram_url();
    assert!(url.contains("sslmode=require"), "the SCRAM test URL should ask for TLS: {}", pgkafka_tests::redact(&url));
    let t = unique_name("p_tls");
    let mut table = Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &[], 1);
    table.key_columns = vec!["id".into()];
    let mut sc = Scenario::new("p_tls", vec![table]).await;
    let producer = Producer::builder(url, env().brokers.clone(), sc.slot.clone(), sc.publication.clone(), sc.topic_map.clone()).build();
    let producer = RunningProducer::start(producer, &sc.slot).await;
    sc.ensure_reference().await;

    // The walsender serving the slot is the SCRAM user's, over TLS.
    let row = sc
        .pg
        .query_one(
            "SELECT a.usename::text, s.ssl FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid \
             JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
            &[&sc.slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pgkafka_scram");
    assert!(row.get::<_, bool>(1), "the replication connection is not encrypted");

    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'über TLS'); UPDATE {t} SET v = 'x'")).await.unwrap();
    let (_, ops) = sc.delivered_once(Duration::from_secs(90)).await;
    assert_eq!(ops.len(), 2);
    producer.stop().await.unwrap();
    sc.cleanup().await;
}

/// A wrong password: start() fails promptly saying the password was refused, without showing it.
#[tokio::test]
async fn a_wrong_password_is_a_clear_error_that_does_not_show_the_password() {
    let url = scram_url();
    let secret = "Wr0ng-Pa55word-xyzzy";
    let (user_part, rest) = url.split_once('@').expect("the SCRAM URL has user:password@");
    let user = user_part.rsplit_once(':').map(|(u, _)| u).expect("the SCRAM URL has a password");
    let wrong = format!("{user}:{secret}@{rest}");
    let t = unique_name("p_pw");
    let mut table = Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &[], 1);
    table.key_columns = vec!["id".into()];
    let sc = Scenario::new("p_pw", vec![table]).await;
    let producer =
        Producer::builder(wrong, env().brokers.clone(), sc.slot.clone(), sc.publication.clone(), sc.topic_map.clone()).build();
    let error = tokio::time::timeout(Duration::from_secs(60), producer.start())
        .await
        .expect("a wrong password must be reported, not retried forever")
        .expect_err("connected with a wrong password");
    let shown = format!("{error} / {error:?}");
    println!("{shown}");
    assert!(matches!(error, ProducerError::Postgres(_) | ProducerError::Config(_)), "{error:?}");
    assert!(!shown.contains(secret), "the error shows the password: {shown}");
    assert!(
        shown.to_lowercase().contains("password authentication failed"),
        "the error does not say the password was refused: {shown}"
    );
    assert!(shown.contains("pgkafka_scram"), "the error does not name the user: {shown}");
    sc.cleanup().await;
}
