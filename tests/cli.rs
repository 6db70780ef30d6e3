//! The `pgkafka` command: bad configuration gets one clear paragraph and a non-zero exit, never a
//! panic or backtrace; `--check` validates the database and brokers and says what it would stream.

use std::path::PathBuf;
use std::process::Output;

use pgkafka_tests::{create_topic, env, pg_client, unique_name};

/// The binary cargo built beside this test (`target/<profile>/pgkafka`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("no current exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("unexpected test binary location");
    let path = dir.join("pgkafka");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p pgkafka --features cli --bin pgkafka` (scripts/test.sh does)",
        path.display()
    );
    path
}

fn run(args: &[&str], config: Option<&str>) -> Output {
    let dir = std::env::temp_dir().join(unique_name("cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = std::process::Command::new(binary());
    command.args(args).env_remove("PGKAFKA_CONNECTION_STRING").env_remove("PGKAFKA_BROKERS").env("RUST_LOG", "error");
    if let Some(text) = config {
        let path = dir.join("pgkafka.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    command.output().expect("cannot run the pgkafka binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One `error:` paragraph, no panic, no backtrace, the given exit code.
fn assert_clean_failure(output: &Output, code: i32, mentions: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "exit status; stderr:\n{text}");
    assert!(text.starts_with("error: "), "stderr should be one error paragraph:\n{text}");
    assert!(!text.contains("panicked") && !text.contains("backtrace"), "a panic reached the user:\n{text}");
    for part in mentions {
        assert!(text.contains(part), "the error does not mention {part:?}:\n{text}");
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let output = run(&["--config", "/nonexistent/pgkafka.toml"], None);
    assert_clean_failure(&output, 2, &["/nonexistent/pgkafka.toml", "--config"]);
}

#[test]
fn an_unknown_field_names_the_line_and_the_known_fields() {
    let output = run(&[], Some("slot = \"s\"\npublication = \"p\"\nbrokres = \"localhost:9092\"\n[topics]\n"));
    assert_clean_failure(&output, 2, &["line 3", "unknown field `brokres`", "brokers"]);
}

#[test]
fn a_missing_connection_string_names_the_setting_and_the_variable() {
    let output = run(&[], Some("brokers = \"localhost:9092\"\nslot = \"s\"\npublication = \"p\"\n[topics]\n"));
    assert_clean_failure(&output, 2, &["connection_string", "PGKAFKA_CONNECTION_STRING"]);
}

#[test]
fn a_bad_connection_string_is_rejected_without_showing_the_password() {
    let config = "connection_string = \"postgresql://u:hunter2@localhost:notaport/db\"\nbrokers = \"localhost:9092\"\n\
                  slot = \"s\"\npublication = \"p\"\n[topics.t]\nname = \"t\"\npartition_key = []\n";
    let output = run(&["--check"], Some(config));
    assert_clean_failure(&output, 2, &["connection string", "u:***@"]);
    assert!(!stderr(&output).contains("hunter2"), "the password leaked:\n{}", stderr(&output));
}

#[test]
fn an_unreachable_server_says_where_and_why() {
    let config = "connection_string = \"postgresql://u:hunter2@127.0.0.1:1/db\"\nbrokers = \"127.0.0.1:19092\"\n\
                  slot = \"s\"\npublication = \"p\"\n[topics.t]\nname = \"t\"\npartition_key = []\n";
    let output = run(&["--check"], Some(config));
    assert_clean_failure(&output, 1, &["127.0.0.1:1", "Connection refused"]);
    assert!(!stderr(&output).contains("hunter2"));
}

#[tokio::test]
async fn check_validates_the_database_and_reports_what_it_would_stream() {
    let pg = pg_client().await;
    let table = unique_name("cli_tbl");
    let publication = unique_name("cli_pub");
    let topic = unique_name("cli_topic");
    create_topic(&topic, 1).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, org int NOT NULL, v text);
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ))
    .await
    .unwrap();
    let config = format!(
        "connection_string = \"{}\"\nbrokers = \"{}\"\nslot = \"{}\"\npublication = \"{publication}\"\n\
         [topics.{table}]\nname = \"{topic}\"\npartition_key = [\"org\"]\n",
        env().database_url,
        env().brokers,
        unique_name("cli_slot")
    );

    // Without REPLICA IDENTITY FULL, --check fails and shows the fix.
    let output = run(&["--check"], Some(&config));
    assert_clean_failure(&output, 2, &[&table, "REPLICA IDENTITY FULL"]);

    pg.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await.unwrap();
    let output = run(&["--check"], Some(&config));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "--check failed:\n{}", stderr(&output));
    assert!(stdout.contains(&format!("{table} -> topic {topic} (key: org)")), "{stdout}");
    assert!(stdout.contains("does not exist yet, will be created"), "--check must not create the slot:\n{stdout}");

    pg.batch_execute(&format!("DROP PUBLICATION {publication}; DROP TABLE {table};")).await.unwrap();
}

/// A slot that does not exist while the topic already holds records: `--check` refuses, naming
/// the slot, the topic and the `slot_missing` setting; with `slot_missing = "create"` it accepts
/// that a new slot will be created.
#[tokio::test]
async fn check_refuses_a_missing_slot_while_the_topic_holds_records_unless_slot_missing_is_create() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let pg = pg_client().await;
    let table = unique_name("cli_lost_tbl");
    let publication = unique_name("cli_lost_pub");
    let topic = unique_name("cli_lost_topic");
    let slot = unique_name("cli_lost_slot");
    create_topic(&topic, 1).await;
    let feeder: FutureProducer = pgkafka_tests::kafka_config().create().unwrap();
    feeder
        .send(FutureRecord::<[u8], [u8]>::to(&topic).payload(b"written by an earlier stream"), std::time::Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text);
         ALTER TABLE {table} REPLICA IDENTITY FULL;
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ))
    .await
    .unwrap();
    let config = format!(
        "connection_string = \"{}\"\nbrokers = \"{}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\
         [topics.{table}]\nname = \"{topic}\"\npartition_key = []\n",
        env().database_url,
        env().brokers,
    );
    let output = run(&["--check"], Some(&config));
    assert_clean_failure(&output, 1, &[&slot, &topic, "slot_missing = \"create\""]);

    let config = format!("slot_missing = \"create\"\n{config}");
    let output = run(&["--check"], Some(&config));
    assert!(output.status.success(), "--check failed:\n{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("will be created"));
    pg.batch_execute(&format!("DROP PUBLICATION {publication}; DROP TABLE {table};")).await.unwrap();
}
