//! A Kafka-protocol proxy in front of the real broker that refuses chosen records or offset commits:
//! how a test makes "the broker refuses one record in the middle of a stream" (Tansu does not enforce
//! topic limits: it accepts a record above a topic's `max.message.bytes`) or "a commit fails" happen.
//!
//! It forwards every request and response unchanged, except:
//! - Metadata responses (and the leader endpoints of Produce responses): each broker's address is
//!   replaced by a proxy listener in front of it, so the client keeps talking through the proxy.
//! - Produce requests with a partition batch holding a record whose value contains the marker given
//!   to [`KafkaProxy::refuse_records_containing`]: that partition is taken out of the request and
//!   answered with the chosen error code (e.g. [`MESSAGE_TOO_LARGE`]), exactly as a broker answers a
//!   batch it refuses; the other partitions of the request reach the broker. It refuses such
//!   batches until [`KafkaProxy::stop_refusing`] ("the limit was raised").
//! - FindCoordinator responses: the group coordinator's address is replaced the same way, so a
//!   consumer's group traffic (join, heartbeat, offset commits) goes through the proxy too.
//! - OffsetCommit requests, while [`KafkaProxy::refuse_offset_commits`] has refusals left: not
//!   forwarded, each of their partitions answered with the chosen error code (e.g.
//!   [`COORDINATOR_NOT_AVAILABLE`]), as a broker whose coordinator is moving answers.
//!
//! Responses keep the order of their requests: one queue per connection says, for each request,
//! whether its answer comes from the broker or from the proxy.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorResponse, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Kafka error code MESSAGE_TOO_LARGE: the batch exceeds the topic's `max.message.bytes`.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// Kafka error code TOPIC_AUTHORIZATION_FAILED: the producer may no longer write the topic.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// Kafka error code COORDINATOR_NOT_AVAILABLE (retriable): the group coordinator is not ready,
/// e.g. while it moves to another broker.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// Kafka error code REQUEST_TIMED_OUT (retriable).
pub const REQUEST_TIMED_OUT: i16 = 7;
/// Kafka error code REBALANCE_IN_PROGRESS: an offset commit sent while the group rebalances. The
/// offsets may be committed again once it settled. librdkafka hands it to the commit callback as
/// it is, whereas it keeps an asynchronous commit refused with [`COORDINATOR_NOT_AVAILABLE`] or
/// [`REQUEST_TIMED_OUT`] and sends it again itself (up to `socket.timeout.ms`), so the
/// application never sees those fail.
pub const REBALANCE_IN_PROGRESS: i16 = 27;

/// Which records to refuse, and with what.
#[derive(Debug, Clone)]
struct Refusal {
    marker: Vec<u8>,
    error_code: i16,
    answer_after: Duration,
}

/// One partition's offset in an OffsetCommit request the proxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One refused partition batch, as the test can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
}

#[derive(Debug, Default)]
struct State {
    /// Upstream broker `host:port` -> the proxy listener in front of it.
    listeners: Mutex<HashMap<String, SocketAddr>>,
    accept_loops: Mutex<Vec<JoinHandle<()>>>,
    refusal: Mutex<Option<Refusal>>,
    refused: Mutex<Vec<Refused>>,
    connections: AtomicUsize,
    /// How many more OffsetCommit requests to refuse, and with what error code.
    commits_to_refuse: AtomicU32,
    commit_error_code: Mutex<i16>,
    /// Each partition of the OffsetCommit requests refused so far.
    refused_commits: Mutex<Vec<RefusedCommit>>,
}

/// The proxy; dropping it stops accepting connections.
#[derive(Debug)]
pub struct KafkaProxy {
    bootstrap: String,
    state: Arc<State>,
}

impl KafkaProxy {
    /// A proxy in front of the first broker of `upstream` (a bootstrap list); the others are
    /// reached through listeners made as metadata names them.
    pub async fn start(upstream: &str) -> Self {
        let first = upstream.split(',').next().unwrap_or(upstream).trim().to_owned();
        let state = Arc::new(State::default());
        let local = listener_for(&state, &first);
        Self { bootstrap: local.to_string(), state }
    }

    /// The bootstrap address clients should use instead of the broker's.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// From now on, refuse every partition batch that holds a record whose value contains
    /// `marker`, answering it with `error_code` after `answer_after`. The delay holds the answer
    /// back while the client pipelines later batches behind it (they reach the broker meanwhile),
    /// so the race between a refusal and the records after it happens every time, not only
    /// under load.
    pub fn refuse_records_containing(&self, marker: &str, error_code: i16, answer_after: Duration) {
        *lock(&self.state.refusal) = Some(Refusal { marker: marker.as_bytes().to_vec(), error_code, answer_after });
    }

    /// Forward everything from now on.
    pub fn stop_refusing(&self) {
        *lock(&self.state.refusal) = None;
    }

    /// Every partition batch refused so far.
    pub fn refused(&self) -> Vec<Refused> {
        lock(&self.state.refused).clone()
    }

    /// Answers the next `count` OffsetCommit requests (any client, any group) with `error_code` for
    /// each of their partitions, without forwarding them; `0` forwards them all again.
    pub fn refuse_offset_commits(&self, count: u32, error_code: i16) {
        *lock(&self.state.commit_error_code) = error_code;
        self.state.commits_to_refuse.store(count, Ordering::SeqCst);
    }

    /// Every partition of every OffsetCommit request refused so far.
    pub fn refused_commits(&self) -> Vec<RefusedCommit> {
        lock(&self.state.refused_commits).clone()
    }

    /// How many client connections the proxy accepted (a test can check traffic goes through it).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        for task in lock(&self.state.accept_loops).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The proxy listener in front of `upstream`, made on first use.
fn listener_for(state: &Arc<State>, upstream: &str) -> SocketAddr {
    let mut listeners = lock(&state.listeners);
    if let Some(local) = listeners.get(upstream) {
        return *local;
    }
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a proxy listener");
    std_listener.set_nonblocking(true).expect("nonblocking listener");
    let local = std_listener.local_addr().expect("listener address");
    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
    let upstream_addr = upstream.to_owned();
    let task_state = Arc::clone(state);
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            task_state.connections.fetch_add(1, Ordering::Relaxed);
            let Ok(server) = TcpStream::connect(&upstream_addr).await else {
                eprintln!("kafka proxy: cannot connect to the broker {upstream_addr}");
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let (answers, queue) = mpsc::unbounded_channel();
            tokio::spawn(forward_requests(client_read, server_write, answers, Arc::clone(&task_state)));
            tokio::spawn(forward_responses(server_read, client_write, queue, Arc::clone(&task_state)));
        }
    });
    lock(&state.accept_loops).push(task);
    listeners.insert(upstream.to_owned(), local);
    local
}

/// Where the answer to one request comes from, in request order.
enum Answer {
    /// The broker's next response; the request's API key and version say how to read it, and
    /// `refused` lists partitions the proxy took out of a Produce request, to add to its response.
    Broker { api_key: Option<ApiKey>, version: i16, refused: Vec<Refused>, delay: Duration },
    /// A response the proxy made (a Produce request all of whose partitions it refused), sent
    /// after the delay.
    Proxy(Bytes, Duration),
}

async fn read_frame(read: &mut OwnedReadHalf) -> io::Result<Bytes> {
    let len = read.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| io::Error::other("negative frame length"))?;
    let mut frame = vec![0; len];
    read.read_exact(&mut frame).await?;
    Ok(Bytes::from(frame))
}

async fn write_frame(write: &mut OwnedWriteHalf, frame: &[u8]) -> io::Result<()> {
    let len = i32::try_from(frame.len()).map_err(|_| io::Error::other("frame too long"))?;
    write.write_all(&len.to_be_bytes()).await?;
    write.write_all(frame).await
}

fn encode<H: Encodable, B: Encodable>(header: &H, header_version: i16, body: &B, version: i16) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut out, version).map_err(|e| e.to_string())?;
    Ok(out.freeze())
}

async fn forward_requests(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    answers: mpsc::UnboundedSender<Answer>,
    state: Arc<State>,
) -> io::Result<()> {
    loop {
        let frame = read_frame(&mut client).await?;
        let mut body = frame.clone();
        let Ok(header) = decode_request_header_from_buffer(&mut body) else {
            // Unknown to kafka-protocol: pass it on and its response back untouched.
            let _ = answers.send(Answer::Broker { api_key: None, version: 0, refused: Vec::new(), delay: Duration::ZERO });
            write_frame(&mut server, &frame).await?;
            continue;
        };
        let api_key = ApiKey::try_from(header.request_api_key).ok();
        let version = header.request_api_version;
        if api_key == Some(ApiKey::OffsetCommit) && take_commit_refusal(&state) {
            let error_code = *lock(&state.commit_error_code);
            match refuse_offset_commit(&header, body.clone(), error_code) {
                Ok((response, refused)) => {
                    eprintln!("kafka proxy: refusing an offset commit with error {error_code}: {refused:?}");
                    lock(&state.refused_commits).extend(refused);
                    let _ = answers.send(Answer::Proxy(response, Duration::ZERO));
                    continue;
                }
                Err(error) => eprintln!("kafka proxy: cannot read an offset commit request, forwarding it: {error}"),
            }
        }
        if api_key == Some(ApiKey::Produce) {
            let refusal = lock(&state.refusal).clone();
            if let Some(refusal) = refusal {
                match refuse(&header, body, &refusal) {
                    Ok(Some(Refusing { request, refused, acks })) => {
                        lock(&state.refused).extend(refused.iter().cloned());
                        eprintln!("kafka proxy: refusing {refused:?}");
                        match request {
                            Some(request) => {
                                if acks != 0 {
                                    let _ = answers.send(Answer::Broker { api_key, version, refused, delay: refusal.answer_after });
                                }
                                write_frame(&mut server, &request).await?;
                            }
                            None => {
                                if acks != 0 {
                                    let response = produce_response(&header, &refused, ProduceResponse::default())
                                        .map_err(io::Error::other)?;
                                    let _ = answers.send(Answer::Proxy(response, refusal.answer_after));
                                }
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => eprintln!("kafka proxy: cannot read a produce request, forwarding it: {error}"),
                }
            }
            if produce_acks(&frame).is_some_and(|acks| acks == 0) {
                write_frame(&mut server, &frame).await?;
                continue;
            }
        }
        let _ = answers.send(Answer::Broker { api_key, version, refused: Vec::new(), delay: Duration::ZERO });
        write_frame(&mut server, &frame).await?;
    }
}

/// Takes one of the OffsetCommit refusals left, if any.
fn take_commit_refusal(state: &State) -> bool {
    state.commits_to_refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
}

/// The answer to an OffsetCommit request that refuses each of its partitions with `error_code`,
/// and what it refused.
fn refuse_offset_commit(
    header: &RequestHeader,
    mut body: Bytes,
    error_code: i16,
) -> Result<(Bytes, Vec<RefusedCommit>), String> {
    let version = header.request_api_version;
    let request = OffsetCommitRequest::decode(&mut body, version).map_err(|e| e.to_string())?;
    let mut refused = Vec::new();
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    refused.push(RefusedCommit {
                        topic: topic.name.0.as_str().to_owned(),
                        partition: partition.partition_index,
                        offset: partition.committed_offset,
                    });
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(error_code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    let response = OffsetCommitResponse::default().with_topics(topics);
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let frame = encode(&response_header, ApiKey::OffsetCommit.response_header_version(version), &response, version)?;
    Ok((frame, refused))
}

/// The `acks` of a produce request (acks=0 requests get no response).
fn produce_acks(frame: &Bytes) -> Option<i16> {
    let mut body = frame.clone();
    let header = decode_request_header_from_buffer(&mut body).ok()?;
    ProduceRequest::decode(&mut body, header.request_api_version).ok().map(|r| r.acks)
}

/// What to do with a produce request some of whose partitions are refused.
struct Refusing {
    /// The request without the refused partitions, or `None` if nothing is left to send.
    request: Option<Bytes>,
    refused: Vec<Refused>,
    acks: i16,
}

fn refuse(header: &RequestHeader, mut body: Bytes, refusal: &Refusal) -> Result<Option<Refusing>, String> {
    let version = header.request_api_version;
    let mut request = ProduceRequest::decode(&mut body, version).map_err(|e| e.to_string())?;
    let mut refused = Vec::new();
    for topic in &mut request.topic_data {
        let name = topic.name.0.as_str().to_owned();
        topic.partition_data.retain(|partition| {
            let Some(records) = &partition.records else { return true };
            let mut records = records.clone();
            let holds_marker = RecordBatchDecoder::decode_all(&mut records)
                .map(|sets| {
                    sets.iter().flat_map(|set| &set.records).any(|record| {
                        record.value.as_ref().is_some_and(|v| v.windows(refusal.marker.len()).any(|w| w == refusal.marker))
                    })
                })
                .unwrap_or(false);
            if holds_marker {
                refused.push(Refused { topic: name.clone(), partition: partition.index, error_code: refusal.error_code });
            }
            !holds_marker
        });
    }
    if refused.is_empty() {
        return Ok(None);
    }
    request.topic_data.retain(|topic| !topic.partition_data.is_empty());
    let acks = request.acks;
    let request = if request.topic_data.is_empty() {
        None
    } else {
        let header_version = ApiKey::Produce.request_header_version(version);
        Some(encode(header, header_version, &request, version)?)
    };
    Ok(Some(Refusing { request, refused, acks }))
}

/// `response` with an error answer for every refused partition added, encoded for `header`'s request.
fn produce_response(header: &RequestHeader, refused: &[Refused], mut response: ProduceResponse) -> Result<Bytes, String> {
    for refusal in refused {
        let partition = PartitionProduceResponse::default()
            .with_index(refusal.partition)
            .with_error_code(refusal.error_code)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1)
            .with_error_message(Some(StrBytes::from_static_str("refused by the test's Kafka proxy")));
        let name = TopicName(StrBytes::from_string(refusal.topic.clone()));
        match response.responses.iter_mut().find(|t| t.name == name) {
            Some(topic) => topic.partition_responses.push(partition),
            None => response
                .responses
                .push(TopicProduceResponse::default().with_name(name).with_partition_responses(vec![partition])),
        }
    }
    let version = header.request_api_version;
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    encode(&response_header, ApiKey::Produce.response_header_version(version), &response, version)
}

async fn forward_responses(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    state: Arc<State>,
) -> io::Result<()> {
    while let Some(answer) = answers.recv().await {
        let frame = match answer {
            Answer::Proxy(frame, delay) => {
                tokio::time::sleep(delay).await;
                frame
            }
            Answer::Broker { api_key, version, refused, delay } => {
                let frame = read_frame(&mut server).await?;
                tokio::time::sleep(delay).await;
                match rewrite_response(&state, api_key, version, &refused, frame.clone()) {
                    Ok(Some(rewritten)) => rewritten,
                    Ok(None) => frame,
                    Err(error) => {
                        eprintln!("kafka proxy: cannot rewrite a {api_key:?} v{version} response, forwarding it: {error}");
                        frame
                    }
                }
            }
        };
        write_frame(&mut client, &frame).await?;
    }
    Ok(())
}

/// The response with broker addresses pointing at the proxy and refused partitions answered, or
/// `None` when it passes unchanged.
fn rewrite_response(
    state: &Arc<State>,
    api_key: Option<ApiKey>,
    version: i16,
    refused: &[Refused],
    mut frame: Bytes,
) -> Result<Option<Bytes>, String> {
    let Some(api_key) = api_key else { return Ok(None) };
    if !matches!(api_key, ApiKey::Metadata | ApiKey::Produce | ApiKey::FindCoordinator) {
        return Ok(None);
    }
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version).map_err(|e| e.to_string())?;
    if api_key == ApiKey::FindCoordinator {
        let mut response = FindCoordinatorResponse::decode(&mut frame, version).map_err(|e| e.to_string())?;
        // Versions 0-3 answer for one key at the top level, 4+ in `coordinators`; an error answer
        // carries an empty host, which stays as it is.
        if !response.host.is_empty() {
            let local = listener_for(state, &format!("{}:{}", response.host.as_str(), response.port));
            response.host = StrBytes::from_string(local.ip().to_string());
            response.port = i32::from(local.port());
        }
        for coordinator in response.coordinators.iter_mut().filter(|c| !c.host.is_empty()) {
            let local = listener_for(state, &format!("{}:{}", coordinator.host.as_str(), coordinator.port));
            coordinator.host = StrBytes::from_string(local.ip().to_string());
            coordinator.port = i32::from(local.port());
        }
        return encode(&header, header_version, &response, version).map(Some);
    }
    if api_key == ApiKey::Metadata {
        let mut response = MetadataResponse::decode(&mut frame, version).map_err(|e| e.to_string())?;
        for broker in &mut response.brokers {
            let local = listener_for(state, &format!("{}:{}", broker.host.as_str(), broker.port));
            broker.host = StrBytes::from_string(local.ip().to_string());
            broker.port = i32::from(local.port());
        }
        return encode(&header, header_version, &response, version).map(Some);
    }
    let mut response = ProduceResponse::decode(&mut frame, version).map_err(|e| e.to_string())?;
    if refused.is_empty() && response.node_endpoints.is_empty() {
        return Ok(None);
    }
    for endpoint in &mut response.node_endpoints {
        let local = listener_for(state, &format!("{}:{}", endpoint.host.as_str(), endpoint.port));
        endpoint.host = StrBytes::from_string(local.ip().to_string());
        endpoint.port = i32::from(local.port());
    }
    let request_header = RequestHeader::default().with_request_api_version(version).with_correlation_id(header.correlation_id);
    produce_response(&request_header, refused, response).map(Some)
}
