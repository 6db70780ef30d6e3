//! A basic consumer with the default format detection on a topic holding both formats.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, Op, ReplicationOp};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::{create_topic, env, kafka_config, unique_name, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Default)]
struct Collect(Mutex<Vec<ReplicationOp>>);

#[async_trait]
impl BasicApplication for Collect {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.0.lock().unwrap().push(op.clone());
        Ok(())
    }
}

/// A topic holding a pgkafka op, a Debezium transaction (BEGIN, an insert, a delete, its
/// tombstone, END), a heartbeat and another pgkafka op, ending on passed-over records: with the
/// default detection the application gets the four ops in order, nothing stops the consumer (under the default
/// `Stop` policy), and the committed offset is past the last, skipped, record.
///
/// Checked to fail: with skipped records not finishing their offsets, the committed offset stays
/// at the last op's.
#[tokio::test]
async fn detection_reads_both_formats_and_commits_past_passed_over_records() {
    let topic = unique_name("dbz_detect");
    let group = unique_name("dbz_detect_g");
    create_topic(&topic, 1).await;
    let ours =
        |id: &str| format!(r#"{{"table_name":"t","col_names":["id"],"lsn":5,"seq_id":0,"op":{{"Insert":["{id}"]}}}}"#);
    let source =
        r#"{"connector":"postgresql","schema":"public","table":"t","lsn":90,"sequence":"[\"80\",\"90\"]","txId":7}"#;
    let theirs = format!(
        r#"{{"before":null,"after":{{"id":2}},"source":{source},"op":"c","transaction":{{"id":"7:85","total_order":1}}}}"#
    );
    let delete = format!(
        r#"{{"before":{{"id":2}},"after":null,"source":{source},"op":"d","transaction":{{"id":"7:85","total_order":2}}}}"#
    );
    let begin = r#"{"status":"BEGIN","id":"7:85","ts_ms":1,"event_count":null,"data_collections":null}"#;
    let end = r#"{"status":"END","id":"7:85","ts_ms":1,"event_count":2,"data_collections":[{"data_collection":"public.t","event_count":2}]}"#;
    let heartbeat =
        r#"{"schema":{"type":"struct","name":"io.debezium.connector.common.Heartbeat"},"payload":{"ts_ms":1}}"#;
    let (first, third) = (ours("1"), ours("3"));
    let values: Vec<Option<&str>> = vec![
        Some(&first),
        Some(begin),
        Some(&theirs),
        Some(&delete),
        None,
        Some(end),
        Some(heartbeat),
        Some(&third),
        None,
        Some(end),
    ];
    let producer: FutureProducer = kafka_config().set("acks", "all").create().unwrap();
    for value in &values {
        let mut record = FutureRecord::to(&topic).partition(0).key("k");
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    let app = Arc::new(Collect::default());
    let consumer = Consumer::new(&group, vec![topic.as_str()], env().brokers.as_str(), Arc::clone(&app))
        .commit_interval(Duration::from_millis(100));
    let running = RunningConsumer::basic(consumer);
    wait_for("four ops", Duration::from_secs(30), || async { (app.0.lock().unwrap().len() == 4).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await.unwrap();

    let ops = app.0.lock().unwrap().clone();
    let ids: Vec<(&str, &Op)> = ops.iter().map(|op| (op.table_name.as_str(), &op.op)).collect();
    let one = |id: &str| vec![Some(id.to_owned())];
    assert_eq!(
        ids,
        [
            ("t", &Op::Insert(one("1"))),
            ("t", &Op::Insert(one("2"))),
            ("t", &Op::Delete(one("2"))),
            ("t", &Op::Insert(one("3")))
        ]
    );

    let reader: BaseConsumer = kafka_config().set("group.id", &group).create().unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(&topic, 0);
    let committed = reader.committed_offsets(list, Duration::from_secs(10)).unwrap();
    let offset = committed.find_partition(&topic, 0).map(|e| e.offset());
    // Never closed: closing a consumer with a group id can block with this broker.
    std::mem::forget(reader);
    assert_eq!(offset, Some(Offset::Offset(values.len() as i64)));
}
