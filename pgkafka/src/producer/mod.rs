//! The replication-slot-to-Kafka producer.

use std::collections::HashMap;

use crate::TopicInfo;

/// Streams every row change of a publication's tables from a logical replication slot to Kafka.
#[derive(Debug)]
pub struct Producer {
    #[allow(dead_code)]
    topic_map: HashMap<String, TopicInfo>,
}

impl Producer {
    /// A producer for the given database, brokers, slot, publication and topic map.
    #[must_use]
    pub fn new(
        connection_string: String,
        brokers: String,
        slot_name: String,
        publication_name: String,
        topic_map: HashMap<String, TopicInfo>,
    ) -> Self {
        let _ = (connection_string, brokers, slot_name, publication_name);
        Self { topic_map }
    }
}
