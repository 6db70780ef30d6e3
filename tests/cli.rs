//! The `pgkafka` command: bad configuration gets one clear paragraph and a non-zero exit, never a
//! panic or backtrace; `--check` validates the database and brokers and says what it would stream;
//! its logs suit a file or a log shipper.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pgkafka_tests::slots::drop_slot;
use pgkafka_tests::{create_topic, env, pg_client, unique_name, wait_for};

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
    let mut command = command(args, "error");
    if let Some(text) = config {
        let path = dir.join("pgkafka.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    command.output().expect("cannot run the pgkafka binary")
}

/// The binary with `args`, logging at `log_level`, its settings from the file alone (the
/// environment's `PGKAFKA_*` settings removed).
fn command(args: &[&str], log_level: &str) -> Command {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_remove("PGKAFKA_CONNECTION_STRING")
        .env_remove("PGKAFKA_BROKERS")
        .env_remove("PGKAFKA_LOG_FORMAT")
        .env("RUST_LOG", log_level);
    command
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

/// A `--config` path that does not exist: exit status 2 and one error paragraph naming the path and
/// the flag.
#[test]
fn a_missing_config_file_is_a_clear_error() {
    let output = run(&["--config", "/nonexistent/pgkafka.toml"], None);
    assert_clean_failure(&output, 2, &["/nonexistent/pgkafka.toml", "--config"]);
}

/// A misspelt setting (`brokres`) in the config file: the error names its line and the field meant.
#[test]
fn an_unknown_field_names_the_line_and_the_known_fields() {
    let output = run(&[], Some("slot = \"s\"\npublication = \"p\"\nbrokres = \"localhost:9092\"\n[topics]\n"));
    assert_clean_failure(&output, 2, &["line 3", "unknown field `brokres`", "brokers"]);
}

/// A config file without `connection_string`: the error names the setting and the environment
/// variable that can give it.
#[test]
fn a_missing_connection_string_names_the_setting_and_the_variable() {
    let output = run(&[], Some("brokers = \"localhost:9092\"\nslot = \"s\"\npublication = \"p\"\n[topics]\n"));
    assert_clean_failure(&output, 2, &["connection_string", "PGKAFKA_CONNECTION_STRING"]);
}

/// A topic asking for the Debezium format in a file without a `[debezium]` table, and Debezium
/// formats naming a topic no entry writes to: each a configuration error saying what to add.
#[test]
fn a_debezium_format_without_its_settings_is_a_clear_error() {
    let base = "connection_string = \"postgresql://u@localhost:1/db\"\nbrokers = \"localhost:9092\"\n\
                slot = \"s\"\npublication = \"p\"\n";
    let output = run(&["--check"], Some(&format!("{base}[topics.t]\nname = \"t\"\npartition_key = []\nformat = \"debezium\"\n")));
    assert_clean_failure(&output, 2, &["debezium format", "[debezium]", "name"]);
    let output = run(&["--check"], Some(&format!("{base}format = \"debezium\"\n[debezium]\nname = \" \"\n[topics.t]\nname = \"t\"\npartition_key = []\n")));
    assert_clean_failure(&output, 2, &["empty name"]);
}

/// `--check` with a malformed connection string: rejected as such, with the password shown as
/// `***`.
#[test]
fn a_bad_connection_string_is_rejected_without_showing_the_password() {
    let config = "connection_string = \"postgresql://u:hunter2@localhost:notaport/db\"\nbrokers = \"localhost:9092\"\n\
                  slot = \"s\"\npublication = \"p\"\n[topics.t]\nname = \"t\"\npartition_key = []\n";
    let output = run(&["--check"], Some(config));
    assert_clean_failure(&output, 2, &["connection string", "u:***@"]);
    assert!(!stderr(&output).contains("hunter2"), "the password leaked:\n{}", stderr(&output));
}

/// `--check` against a port nothing listens on: exit status 1, naming the address and the refusal,
/// not the password.
#[test]
fn an_unreachable_server_says_where_and_why() {
    let config = "connection_string = \"postgresql://u:hunter2@127.0.0.1:1/db\"\nbrokers = \"127.0.0.1:19092\"\n\
                  slot = \"s\"\npublication = \"p\"\n[topics.t]\nname = \"t\"\npartition_key = []\n";
    let output = run(&["--check"], Some(config));
    assert_clean_failure(&output, 1, &["127.0.0.1:1", "Connection refused"]);
    assert!(!stderr(&output).contains("hunter2"));
}

/// `--check` on a table without REPLICA IDENTITY FULL fails showing the fix; once fixed it lists
/// each table's topic and key and does not create the slot.
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

/// What the producer run by the command showed.
struct ProducerRun {
    /// Its stderr.
    logs: String,
    /// Its Prometheus page, read while it streamed, when it was asked to serve one.
    metrics: Option<String>,
}

/// Runs the producer through the command on a fresh published table, its stderr redirected to a
/// file the way a service manager does, until it says it is streaming (then reads its metrics
/// page, with `serve_metrics`); stops it with SIGTERM.
async fn run_producer(args: &[&str], serve_metrics: bool) -> ProducerRun {
    let pg = pg_client().await;
    let table = unique_name("cli_log_tbl");
    let publication = unique_name("cli_log_pub");
    let slot = unique_name("cli_log_slot");
    create_topic(&table, 1).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY); ALTER TABLE {table} REPLICA IDENTITY FULL;
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(unique_name("cli_log"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pgkafka.toml");
    std::fs::write(
        &config,
        format!(
            "connection_string = \"{}\"\nbrokers = \"{}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\
             [topics.{table}]\nname = \"{table}\"\npartition_key = []\n",
            env().database_url,
            env().brokers
        ),
    )
    .unwrap();
    let log = dir.join("pgkafka.log");
    let metrics_addr = serve_metrics.then(free_local_addr);
    let mut command = command(args, "info");
    if let Some(addr) = &metrics_addr {
        command.arg("--metrics-addr").arg(addr);
    }
    let mut child = command
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("cannot run the pgkafka binary");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the producer to stream", Duration::from_secs(30), || {
        let text = read_log();
        let exited = child.try_wait().ok().flatten();
        assert!(exited.is_none(), "the producer exited ({exited:?}):\n{text}");
        async move { text.contains("streaming from the replication slot").then_some(()) }
    })
    .await;
    let metrics = metrics_addr.map(|addr| http_get(&addr, "/metrics"));
    let stopped = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(stopped.success());
    let status = child.wait().unwrap();
    let text = read_log();
    assert!(status.success(), "the producer did not stop cleanly ({status}):\n{text}");

    drop_slot(&pg, &slot).await;
    pg.batch_execute(&format!("DROP PUBLICATION {publication}; DROP TABLE {table};")).await.unwrap();
    ProducerRun { logs: text, metrics }
}

/// A local address no one listens on now.
fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The response to a plain HTTP GET of `path` at `addr`, headers and body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Logs redirected to a file are plain text: no ANSI colour codes (they are for terminals).
/// Fails against the command before `with_ansi(stderr is a terminal)`: its levels were coloured.
/// The metrics page it serves meanwhile explains each metric (`# HELP`).
#[tokio::test]
async fn redirected_logs_carry_no_colour_codes_and_metrics_have_help() {
    let run = run_producer(&[], true).await;
    let text = run.logs;
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a redirected log:\n{text:?}");
    let metrics = run.metrics.unwrap_or_default();
    assert!(
        metrics.contains("# HELP pgkafka_producer_reconnects_total "),
        "{metrics}"
    );
}

/// `--log-format json` prints one JSON object per line, the message and its fields at the top
/// level and the producer's slot as a field of its span, for log shippers to index.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_span_fields() {
    let text = run_producer(&["--log-format", "json"], false).await.logs;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    let streaming = lines
        .iter()
        .find(|line| line["message"] == "streaming from the replication slot")
        .unwrap_or_else(|| panic!("no streaming line:\n{text}"));
    assert_eq!(streaming["level"], "INFO");
    let slot = streaming["slot"].as_str().expect("the event's own fields are top-level fields");
    assert_eq!(streaming["span"]["slot"], slot, "the span's slot is a field: {streaming}");
    assert_eq!(streaming["span"]["name"], "pgkafka_producer");
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

/// `pgkafka backfill`: requesting a backfill of a streamed table records it as pending, `--status`
/// lists it, `--cancel <table>` cancels it, and a table the producer does not stream is refused
/// with an error naming it. No producer needs to run for any of it.
#[tokio::test]
async fn backfill_requests_lists_and_cancels() {
    let pg = pg_client().await;
    let table = unique_name("cli_bf_tbl");
    let publication = unique_name("cli_bf_pub");
    let topic = unique_name("cli_bf_topic");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text); ALTER TABLE {table} REPLICA IDENTITY FULL;
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ))
    .await
    .unwrap();
    let config = format!(
        "connection_string = \"{}\"\nbrokers = \"{}\"\nslot = \"{}\"\npublication = \"{publication}\"\nbackfills = true\n\
         [topics.{table}]\nname = \"{topic}\"\npartition_key = []\n",
        env().database_url,
        env().brokers,
        unique_name("cli_bf_slot")
    );

    let output = run(&["backfill", "--table", &table], Some(&config));
    assert!(output.status.success(), "backfill --table failed:\n{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("requested backfill"), "{output:?}");

    let output = run(&["backfill", "--status"], Some(&config));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success() && stdout.contains(&table) && stdout.contains("pending"), "{stdout}");

    let output = run(&["backfill", "--cancel", &table], Some(&config));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cancelled 1 backfill"), "{output:?}");
    let stdout = String::from_utf8_lossy(&run(&["backfill", "--status"], Some(&config)).stdout).into_owned();
    assert!(stdout.contains("cancelled") && !stdout.contains("pending"), "{stdout}");

    let output = run(&["backfill", "--table", "no_such_table"], Some(&config));
    assert_clean_failure(&output, 2, &["no_such_table", "not streamed"]);

    pg.batch_execute(&format!("DROP PUBLICATION {publication}; DROP TABLE {table};")).await.unwrap();
}
