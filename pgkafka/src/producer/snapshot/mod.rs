//! Snapshots of published tables into their topics: the settings, reading tables in key order
//! ([`chunk`], parsing `COPY`'s text rows in [`copy_text`]), the durable progress and signal
//! table ([`control`]), the initial snapshot taken when the producer creates its slot
//! ([`initial`]), and on-demand backfills while streaming ([`backfill`], consistent with the
//! stream through the DBLog [`window`]).

pub(crate) mod backfill;
#[allow(dead_code)] // Parts are used by the backfill only.
pub(crate) mod chunk;
#[allow(dead_code)] // Parts are used by the backfill only.
pub(crate) mod control;
mod copy_text;
pub(crate) mod initial;
pub(crate) mod window;

/// Whether the producer publishes the rows that exist when it creates its slot.
///
/// ```no_run
/// # use std::collections::HashMap;
/// use pgkafka::{Producer, SnapshotMode};
/// # async fn run(topic_map: HashMap<String, pgkafka::TopicInfo>) -> Result<(), pgkafka::ProducerError> {
/// Producer::builder("postgresql://app@db/app", "kafka:9092", "slot_1", "publication_1", topic_map)
///     .snapshot(SnapshotMode::Initial)
///     .build()
///     .start()
///     .await
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SnapshotMode {
    /// Stream only the changes made after the slot was created (the default of
    /// [`Producer::new`](crate::Producer::new)).
    #[default]
    Never,
    /// When the producer creates its slot, first publish every row of every published table as
    /// it was at the slot's consistent point, then stream the changes made after it.
    Initial,
    /// Publish the snapshot as with [`Initial`](Self::Initial), then stop and drop the slot:
    /// a one-off copy of the tables into their topics.
    InitialOnly,
}

impl SnapshotMode {
    /// As the `pgkafka` config file spells it: `never`, `initial`, `initial_only`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Initial => "initial",
            Self::InitialOnly => "initial_only",
        }
    }
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "never" => Ok(Self::Never),
            "initial" => Ok(Self::Initial),
            "initial_only" => Ok(Self::InitialOnly),
            other => {
                Err(format!("unknown snapshot mode {other:?}: expected \"never\", \"initial\" or \"initial_only\""))
            }
        }
    }
}

/// The snapshot settings of a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) mode: SnapshotMode,
    /// The control table, `schema.table`.
    pub(crate) table: String,
    pub(crate) chunk_rows: usize,
    pub(crate) readers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { mode: SnapshotMode::Never, table: control::DEFAULT_TABLE.to_owned(), chunk_rows: 10_000, readers: 1 }
    }
}

impl Settings {
    /// Whether snapshots are on, so the control table is needed.
    pub(crate) fn enabled(&self) -> bool {
        self.mode != SnapshotMode::Never
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn modes_parse_as_the_config_file_spells_them() {
        for mode in [SnapshotMode::Never, SnapshotMode::Initial, SnapshotMode::InitialOnly] {
            assert_eq!(mode.as_str().parse::<SnapshotMode>(), Ok(mode));
        }
        let error = "always".parse::<SnapshotMode>().unwrap_err();
        assert!(error.contains("\"always\"") && error.contains("initial_only"), "{error}");
    }
}
