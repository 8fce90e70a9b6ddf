//! The messages replicas exchange, as bytes: what a [`crate::Transport`] carries.
//!
//! ```text
//! message := kind: u8 | header length: u32 BE | header: JSON | body
//! entry   := kind: u8 (0 blank, 1 membership, 2 normal) | term: u64 BE | index: u64 BE
//!            | base offset: u64 BE (u64::MAX: none) | payload length: u32 BE | payload
//! ```
//!
//! Requests are openraft's Vote, AppendEntries and InstallSnapshot, and Spool's own Propose,
//! ProposeInOrder, ReadIndex, Progress, Read, Campaign and HandBack; each answer is a JSON `Result` of the
//! response or error (ProposeInOrder's, a list of them), but Read's, which is
//! `header length: u32 BE | header: JSON Result | the batches read`. The body is AppendEntries' entries,
//! InstallSnapshot's chunk of snapshot bytes, Propose's Kafka batch or ProposeInOrder's Kafka
//! batches back to back, each raw; the others have none. A normal entry's payload is its Kafka batch, sliced
//! from the message without a copy, and a membership's is JSON.
//! Everything is checked on arrival ([`decode_request`]): sizes against [`crate::limits`],
//! each Kafka batch whole (its CRC and every record), so a peer's bad message is refused with
//! a reason and never reaches the log.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::entry::{Batch, log_id};
use crate::limits::{
    ENTRIES_PER_MESSAGE_MAX, HAND_BACK_TIMEOUT_MAX, HEADER_BYTES_MAX, MESSAGE_BYTES_MAX,
    PEER_READ_BYTES_MAX, PEER_READ_WAIT_MAX, SNAPSHOT_CHUNK_BYTES,
};
use crate::{NodeId, TypeConfig};

const VOTE: u8 = 1;
const APPEND_ENTRIES: u8 = 2;
const INSTALL_SNAPSHOT: u8 = 3;
const PROPOSE: u8 = 4;
const READ_INDEX: u8 = 5;
const PROGRESS: u8 = 6;
const PROPOSE_IN_ORDER: u8 = 7;
const READ: u8 = 8;
const CAMPAIGN: u8 = 9;
const HAND_BACK: u8 = 10;

/// The version of these messages (and of what carries them, the server's peer protocol),
/// one more with every change a node of the version before cannot read. Nodes tell each
/// other theirs, so a cluster whose nodes run different releases says so rather than failing
/// message by message: 1 is every build before nodes told, 2 the first that does (with
/// `Read`), 3 the first with `Campaign` and `HandBack`.
pub const PROTOCOL_VERSION: u32 = 3;

const BLANK: u8 = 0;
const MEMBERSHIP: u8 = 1;
const NORMAL: u8 = 2;
const NO_OFFSET: u64 = u64::MAX;

/// A request from a peer.
#[derive(Debug)]
pub(crate) enum Request {
    Vote(VoteRequest<NodeId>),
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A batch another node proposes through this one, the leader (`Replica::propose_anywhere`).
    Propose(Bytes),
    /// Batches another node passes to this one, the leader, to be handled in the order given
    /// and answered each (`Replica::forward_in_order`).
    ProposeInOrder(Vec<Bytes>),
    /// Asked of the leader by a replica that must see everything committed so far
    /// (`Replica::read_index`).
    ReadIndex,
    /// Asked by a node that started on an empty data directory: how far this replica's group
    /// has gone (`Replica::peer_has_begun`).
    Progress,
    /// A read asked by a node that holds no replica of the group (`Remote::read`).
    Read(PeerRead),
    /// Asked of a follower by the leader of term `term`, which hands the group over to it
    /// (`Replica::hand_over`): stand for election now.
    Campaign {
        term: u64,
    },
    /// Asked of the leader by any node: hand the group back to its preferred leader now,
    /// within `timeout_ms` (`Replica::hand_back_now`).
    HandBack {
        timeout_ms: u64,
    },
}

/// A read a node that holds no replica of a partition asks of one that does, for its own
/// clients (see [`crate::Remote::read`]). The replica's owner answers it
/// ([`crate::Replica::on_read`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRead {
    /// Whole batches from `offset`, about `bytes_max` bytes of them (0: none, only where the
    /// log starts and ends). When nothing lies past `offset` yet, the replica may wait up to
    /// `wait_ms` for more first.
    Records { offset: u64, bytes_max: u32, wait_ms: u32 },
    /// The first offset at or after `timestamp_ms` (the end if none), as `next_offset`.
    Timestamp { timestamp_ms: i64 },
}

/// A replica's answer to a [`PeerRead`]: where the log starts and ends, and the batches read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadHead {
    /// The offset after the last batch read (the offset asked for when none was); for a
    /// [`PeerRead::Timestamp`], the offset found.
    pub next_offset: u64,
    pub log_start_offset: u64,
    /// The end of what the replica serves (its high watermark).
    pub log_end_offset: u64,
    /// Bytes of the replica's segment files.
    pub size_bytes: u64,
}

/// A [`ReadHead`] and the whole batches read, back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAnswer {
    pub head: ReadHead,
    pub bytes: Bytes,
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid message between replicas: {0}")]
pub struct InvalidMessage(pub(crate) String);

fn invalid(reason: impl Into<String>) -> InvalidMessage {
    InvalidMessage(reason.into())
}

/// AppendEntries without its entries.
#[derive(Serialize, Deserialize)]
struct AppendHeader {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
    entries: u64,
}

/// InstallSnapshot without its chunk, which follows as the body.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
}

fn put_header(buf: &mut BytesMut, kind: u8, header: &impl Serialize) {
    let json = serde_json::to_vec(header).expect("openraft's messages encode as JSON");
    buf.put_u8(kind);
    buf.put_u32(json.len() as u32);
    buf.put_slice(&json);
}

pub(crate) fn encode_request(request: &Request) -> Bytes {
    let mut buf = BytesMut::new();
    match request {
        Request::Vote(vote) => put_header(&mut buf, VOTE, vote),
        Request::InstallSnapshot(snapshot) => {
            let header = SnapshotHeader {
                vote: snapshot.vote,
                meta: snapshot.meta.clone(),
                offset: snapshot.offset,
                done: snapshot.done,
            };
            put_header(&mut buf, INSTALL_SNAPSHOT, &header);
            buf.put_slice(&snapshot.data);
        }
        Request::ReadIndex => put_header(&mut buf, READ_INDEX, &()),
        Request::Read(read) => put_header(&mut buf, READ, read),
        Request::Progress => put_header(&mut buf, PROGRESS, &()),
        Request::Campaign { term } => put_header(&mut buf, CAMPAIGN, term),
        Request::HandBack { timeout_ms } => put_header(&mut buf, HAND_BACK, timeout_ms),
        Request::Propose(kafka) => {
            put_header(&mut buf, PROPOSE, &());
            buf.put_slice(kafka);
        }
        Request::ProposeInOrder(batches) => {
            put_header(&mut buf, PROPOSE_IN_ORDER, &());
            for kafka in batches {
                buf.put_slice(kafka);
            }
        }
        Request::AppendEntries(append) => {
            let header = AppendHeader {
                vote: append.vote,
                prev_log_id: append.prev_log_id,
                leader_commit: append.leader_commit,
                entries: append.entries.len() as u64,
            };
            put_header(&mut buf, APPEND_ENTRIES, &header);
            for entry in &append.entries {
                put_entry(&mut buf, entry);
            }
        }
    }
    buf.freeze()
}

/// The bytes an entry takes in an AppendEntries message.
pub(crate) fn entry_bytes(entry: &Entry<TypeConfig>) -> usize {
    let payload = match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Membership(m) => serde_json::to_vec(m).map_or(0, |json| json.len()),
        EntryPayload::Normal(batch) => batch.kafka.iter().map(Bytes::len).sum(),
    };
    crate::limits::ENTRY_HEAD_BYTES + payload
}

fn put_entry(buf: &mut BytesMut, entry: &Entry<TypeConfig>) {
    let membership;
    let (kind, offset, payload): (u8, u64, &[Bytes]) = match &entry.payload {
        EntryPayload::Blank => (BLANK, NO_OFFSET, &[]),
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(m).expect("a membership encodes as JSON");
            membership = [Bytes::from(json)];
            (MEMBERSHIP, NO_OFFSET, &membership)
        }
        EntryPayload::Normal(batch) => {
            (NORMAL, batch.base_offset.unwrap_or(NO_OFFSET), &batch.kafka)
        }
    };
    let length: usize = payload.iter().map(Bytes::len).sum();
    buf.reserve(crate::limits::ENTRY_HEAD_BYTES + length);
    buf.put_u8(kind);
    buf.put_u64(entry.log_id.leader_id.term);
    buf.put_u64(entry.log_id.index);
    buf.put_u64(offset);
    buf.put_u32(length as u32);
    for part in payload {
        buf.put_slice(part);
    }
}

/// Kafka batches back to back (a normal entry's payload, or the batches of a
/// [`Request::ProposeInOrder`]) split into them, each checked whole; `what` names them in an
/// error.
fn split_batches(mut payload: Bytes, what: &str) -> Result<Vec<Bytes>, InvalidMessage> {
    use spool_storage::batch::v2::kafka;
    let mut batches = Vec::new();
    while !payload.is_empty() {
        if batches.len() == crate::limits::ENTRY_BATCHES_MAX {
            return Err(invalid(format!(
                "{what} holds more than {} batches",
                crate::limits::ENTRY_BATCHES_MAX
            )));
        }
        let length = payload
            .get(kafka::BATCH_LENGTH..kafka::BATCH_LENGTH + 4)
            .map(|length| u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| invalid(format!("{what}'s batches end in a cut-off batch")))?;
        let total = kafka::PREFIX.saturating_add(length);
        if total > payload.len() {
            return Err(invalid(format!(
                "{what}'s batch of {total} bytes is cut off at {} bytes",
                payload.len()
            )));
        }
        let batch = payload.split_to(total);
        spool_storage::batch::check_for_append(&batch)
            .map_err(|error| invalid(format!("{what}'s batch: {error}")))?;
        batches.push(batch);
    }
    if batches.is_empty() {
        return Err(invalid(format!("{what} holds no batch")));
    }
    Ok(batches)
}

/// Splits a message into its kind, JSON header and the rest.
fn split(mut message: Bytes) -> Result<(u8, Bytes, Bytes), InvalidMessage> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(invalid(format!(
            "{} bytes, more than the limit of {MESSAGE_BYTES_MAX}",
            message.len()
        )));
    }
    if message.len() < 5 {
        return Err(invalid("shorter than its 5-byte head"));
    }
    let kind = message.get_u8();
    let length = message.get_u32() as usize;
    if length > HEADER_BYTES_MAX || length > message.len() {
        return Err(invalid(format!("a header of {length} bytes, in {} bytes", message.len())));
    }
    let header = message.split_to(length);
    Ok((kind, header, message))
}

fn json<T: DeserializeOwned>(header: &[u8], what: &str) -> Result<T, InvalidMessage> {
    serde_json::from_slice(header).map_err(|error| invalid(format!("a bad {what}: {error}")))
}

/// Checks a message as the receiving replica does before anything of it reaches Raft or the
/// log (what the peer listener's fuzz target drives): a message that passes encodes again
/// to one that passes.
pub fn check_message(message: Bytes) -> Result<(), InvalidMessage> {
    let request = decode_request(message)?;
    let again = encode_request(&request);
    if let Err(error) = decode_request(again) {
        panic!("a checked message did not survive its own encoding: {error}");
    }
    Ok(())
}

/// Decodes and checks a peer's request.
pub(crate) fn decode_request(message: Bytes) -> Result<Request, InvalidMessage> {
    let (kind, header, mut rest) = split(message)?;
    let request = match kind {
        VOTE => Request::Vote(json(&header, "vote request")?),
        INSTALL_SNAPSHOT => {
            let header: SnapshotHeader = json(&header, "snapshot header")?;
            if rest.len() as u64 > SNAPSHOT_CHUNK_BYTES {
                return Err(invalid(format!(
                    "a snapshot chunk of {} bytes, more than the limit of {SNAPSHOT_CHUNK_BYTES}",
                    rest.len()
                )));
            }
            return Ok(Request::InstallSnapshot(InstallSnapshotRequest {
                vote: header.vote,
                meta: header.meta,
                offset: header.offset,
                data: rest.to_vec(),
                done: header.done,
            }));
        }
        PROPOSE => {
            spool_storage::batch::check_for_append(&rest)
                .map_err(|error| invalid(format!("a proposed batch: {error}")))?;
            return Ok(Request::Propose(rest));
        }
        PROPOSE_IN_ORDER => {
            json::<()>(&header, "proposal header")?;
            return Ok(Request::ProposeInOrder(split_batches(rest, "a proposal")?));
        }
        READ_INDEX => {
            json::<()>(&header, "read-index request")?;
            Request::ReadIndex
        }
        PROGRESS => {
            json::<()>(&header, "progress request")?;
            Request::Progress
        }
        CAMPAIGN => Request::Campaign { term: json(&header, "campaign request")? },
        HAND_BACK => {
            let timeout_ms: u64 = json(&header, "hand-back request")?;
            if timeout_ms > HAND_BACK_TIMEOUT_MAX.as_millis() as u64 {
                return Err(invalid(format!(
                    "a hand-back within {timeout_ms} ms, more than the limit of {HAND_BACK_TIMEOUT_MAX:?}"
                )));
            }
            Request::HandBack { timeout_ms }
        }
        READ => {
            let read: PeerRead = json(&header, "read request")?;
            if let PeerRead::Records { bytes_max, wait_ms, .. } = read {
                if bytes_max > PEER_READ_BYTES_MAX {
                    return Err(invalid(format!(
                        "a read of {bytes_max} bytes, more than the limit of {PEER_READ_BYTES_MAX}"
                    )));
                }
                if u64::from(wait_ms) > PEER_READ_WAIT_MAX.as_millis() as u64 {
                    return Err(invalid(format!(
                        "a read that waits {wait_ms} ms, more than the limit of {PEER_READ_WAIT_MAX:?}"
                    )));
                }
            }
            Request::Read(read)
        }
        APPEND_ENTRIES => {
            let header: AppendHeader = json(&header, "append header")?;
            if header.entries > ENTRIES_PER_MESSAGE_MAX {
                return Err(invalid(format!(
                    "{} entries, more than the limit of {ENTRIES_PER_MESSAGE_MAX}",
                    header.entries
                )));
            }
            let mut entries = Vec::with_capacity(header.entries as usize);
            for _ in 0..header.entries {
                entries.push(take_entry(&mut rest)?);
            }
            Request::AppendEntries(AppendEntriesRequest {
                vote: header.vote,
                prev_log_id: header.prev_log_id,
                leader_commit: header.leader_commit,
                entries,
            })
        }
        kind => return Err(invalid(format!("unknown request kind {kind}"))),
    };
    if !rest.is_empty() {
        return Err(invalid(format!("{} bytes after the request", rest.len())));
    }
    Ok(request)
}

fn take_entry(rest: &mut Bytes) -> Result<Entry<TypeConfig>, InvalidMessage> {
    const HEAD: usize = crate::limits::ENTRY_HEAD_BYTES;
    if rest.len() < HEAD {
        return Err(invalid("an entry cut short"));
    }
    let kind = rest.get_u8();
    let term = rest.get_u64();
    let index = rest.get_u64();
    let offset = rest.get_u64();
    let length = rest.get_u32() as usize;
    if length > rest.len() {
        return Err(invalid(format!(
            "entry {index} claims {length} bytes, {} are left",
            rest.len()
        )));
    }
    let payload = rest.split_to(length);
    let payload = match kind {
        BLANK if payload.is_empty() => EntryPayload::Blank,
        MEMBERSHIP => EntryPayload::Membership(json(&payload, "membership")?),
        NORMAL => {
            let kafka = split_batches(payload, &format!("entry {index}"))?;
            let base_offset = (offset != NO_OFFSET).then_some(offset);
            EntryPayload::Normal(Batch::new(kafka, base_offset))
        }
        kind => return Err(invalid(format!("entry {index} of unknown kind {kind}"))),
    };
    Ok(Entry { log_id: log_id(term, index), payload })
}

/// An answer as it travels: openraft's response, openraft's error, or a refusal of a message
/// that did not decode.
#[derive(Serialize, Deserialize)]
enum Answer<T, E> {
    Ok(T),
    Err(E),
    Refused(String),
}

/// Encodes openraft's answer to a request.
pub(crate) fn encode_response<T: Serialize, E: Serialize>(answer: Result<T, E>) -> Bytes {
    let answer = match answer {
        Ok(response) => Answer::Ok(response),
        Err(error) => Answer::Err(error),
    };
    Bytes::from(serde_json::to_vec(&answer).expect("openraft's answers encode as JSON"))
}

/// Encodes the refusal of a request that did not decode.
pub(crate) fn encode_refusal(error: &InvalidMessage) -> Bytes {
    let answer: Answer<(), ()> = Answer::Refused(error.0.clone());
    Bytes::from(serde_json::to_vec(&answer).expect("a refusal encodes as JSON"))
}

/// Encodes the refusal of a request this replica will not answer now, with the reason.
pub(crate) fn encode_declined(reason: &str) -> Bytes {
    encode_refusal(&invalid(reason))
}

/// Encodes a replica's answer to a [`Request::Read`].
pub(crate) fn encode_read_answer(answer: Result<ReadAnswer, crate::ProposeError>) -> Bytes {
    let (head, bytes) = match answer {
        Ok(ReadAnswer { head, bytes }) => (Answer::Ok(head), bytes),
        Err(error) => (Answer::Err(error), Bytes::new()),
    };
    let json = serde_json::to_vec(&head).expect("a read's answer encodes as JSON");
    let mut buf = BytesMut::with_capacity(4 + json.len() + bytes.len());
    buf.put_u32(json.len() as u32);
    buf.put_slice(&json);
    buf.put_slice(&bytes);
    buf.freeze()
}

/// Decodes a replica's answer to a [`Request::Read`]; a refusal (the request did not decode)
/// is an error naming it.
pub(crate) fn decode_read_answer(
    mut message: Bytes,
) -> Result<Result<ReadAnswer, crate::ProposeError>, InvalidMessage> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(invalid(format!("a read's answer of {} bytes", message.len())));
    }
    if message.first() == Some(&b'{') {
        // A refusal is a bare JSON answer.
        return match json::<Answer<(), ()>>(&message, "answer")? {
            Answer::Refused(reason) => Err(invalid(format!("the peer refused it: {reason}"))),
            _ => Err(invalid("a read answered without its head")),
        };
    }
    if message.len() < 4 {
        return Err(invalid("a read's answer shorter than its head"));
    }
    let length = message.get_u32() as usize;
    if length > HEADER_BYTES_MAX || length > message.len() {
        return Err(invalid(format!("a read's head of {length} bytes, in {}", message.len())));
    }
    let head = message.split_to(length);
    match json::<Answer<ReadHead, crate::ProposeError>>(&head, "read's head")? {
        Answer::Ok(head) => Ok(Ok(ReadAnswer { head, bytes: message })),
        Answer::Err(error) => Ok(Err(error)),
        Answer::Refused(reason) => Err(invalid(format!("the peer refused it: {reason}"))),
    }
}

/// Decodes an answer; a refusal is an error naming what the peer refused.
pub(crate) fn decode_response<T: DeserializeOwned, E: DeserializeOwned>(
    message: &[u8],
) -> Result<Result<T, E>, InvalidMessage> {
    if message.len() > HEADER_BYTES_MAX {
        return Err(invalid(format!("an answer of {} bytes", message.len())));
    }
    match json(message, "answer")? {
        Answer::Ok(response) => Ok(Ok(response)),
        Answer::Err(error) => Ok(Err(error)),
        Answer::Refused(reason) => Err(invalid(format!("the peer refused it: {reason}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership};
    use spool_storage::TimestampMs;
    use spool_storage::batch::{BatchBuilder, ProducerStamp};

    fn kafka_batch() -> Bytes {
        let mut builder = BatchBuilder::new(BytesMut::new());
        builder.push(TimestampMs(5), Some(b"k"), Some(b"v"), &[]);
        builder.finish(ProducerStamp::NONE).freeze()
    }

    fn append() -> AppendEntriesRequest<TypeConfig> {
        let membership = Membership::new(vec![[1, 2, 3].into()], None);
        AppendEntriesRequest {
            vote: Vote::new_committed(4, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 0), 9)),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 0), 8)),
            entries: vec![
                Entry { log_id: log_id(4, 10), payload: EntryPayload::Blank },
                Entry { log_id: log_id(4, 11), payload: EntryPayload::Membership(membership) },
                Entry {
                    log_id: log_id(4, 12),
                    payload: EntryPayload::Normal(Batch::new(
                        vec![kafka_batch(), kafka_batch()],
                        Some(77),
                    )),
                },
            ],
        }
    }

    fn refused(message: Bytes) -> String {
        decode_request(message).expect_err("refused").to_string()
    }

    #[test]
    fn an_append_round_trips_with_its_entries() {
        let sent = append();
        let Request::AppendEntries(got) =
            decode_request(encode_request(&Request::AppendEntries(sent.clone()))).unwrap()
        else {
            panic!("not an append");
        };
        assert_eq!(
            (got.vote, got.prev_log_id, got.leader_commit),
            (sent.vote, sent.prev_log_id, sent.leader_commit)
        );
        assert_eq!(got.entries, sent.entries);
    }

    #[test]
    fn batches_proposed_in_order_round_trip_and_are_checked() {
        let sent = vec![kafka_batch(), kafka_batch(), kafka_batch()];
        let message = encode_request(&Request::ProposeInOrder(sent.clone()));
        let Ok(Request::ProposeInOrder(got)) = decode_request(message.clone()) else {
            panic!("not a proposal in order");
        };
        assert_eq!(got, sent);
        let mut damaged = message.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let error = decode_request(Bytes::from(damaged)).unwrap_err().to_string();
        assert!(error.contains("a proposal's batch"), "{error}");
        let empty = encode_request(&Request::ProposeInOrder(Vec::new()));
        let error = decode_request(empty).unwrap_err().to_string();
        assert!(error.contains("a proposal holds no batch"), "{error}");
    }

    #[test]
    fn a_campaign_and_a_hand_back_round_trip_and_are_checked() {
        let message = encode_request(&Request::Campaign { term: 7 });
        assert!(matches!(decode_request(message.clone()), Ok(Request::Campaign { term: 7 })));
        let trailing = Bytes::from([&message[..], b"x"].concat());
        let error = decode_request(trailing).unwrap_err().to_string();
        assert!(error.contains("1 bytes after the request"), "{error}");
        let mut wrong = BytesMut::new();
        put_header(&mut wrong, CAMPAIGN, &"seven");
        let error = decode_request(wrong.freeze()).unwrap_err().to_string();
        assert!(error.contains("campaign request"), "{error}");
        let hand_back = encode_request(&Request::HandBack { timeout_ms: 30_000 });
        let decoded = decode_request(hand_back);
        assert!(matches!(decoded, Ok(Request::HandBack { timeout_ms: 30_000 })));
        let too_long = encode_request(&Request::HandBack { timeout_ms: 3_600_000 });
        let error = decode_request(too_long).unwrap_err().to_string();
        assert!(error.contains("more than the limit"), "{error}");
    }

    #[test]
    fn an_entry_s_batches_must_fill_its_payload_exactly() {
        let two = [kafka_batch(), kafka_batch()].concat();
        assert_eq!(split_batches(Bytes::from(two.clone()), "entry 5").unwrap().len(), 2);
        let cut = Bytes::from(two[..two.len() - 1].to_vec());
        let error = split_batches(cut, "entry 5").unwrap_err().to_string();
        assert!(error.contains("entry 5's batch of") && error.contains("cut off"), "{error}");
        let stray = Bytes::from([&kafka_batch()[..], &[0, 1, 2]].concat());
        let error = split_batches(stray, "entry 5").unwrap_err().to_string();
        assert!(error.contains("end in a cut-off batch"), "{error}");
        let error = split_batches(Bytes::new(), "entry 5").unwrap_err().to_string();
        assert!(error.contains("holds no batch"), "{error}");
    }

    #[test]
    fn a_snapshot_chunk_round_trips_raw() {
        let snapshot = || InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(4, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(4, 12)),
                last_membership: Default::default(),
                snapshot_id: "4-12".into(),
            },
            offset: 1 << 20,
            data: (0..=255u8).cycle().take(SNAPSHOT_CHUNK_BYTES as usize).collect(),
            done: true,
        };
        let sent = snapshot();
        let message = encode_request(&Request::InstallSnapshot(sent.clone()));
        assert!(message.len() < sent.data.len() + 1024, "{} bytes", message.len());
        let Request::InstallSnapshot(got) = decode_request(message).unwrap() else {
            panic!("not a snapshot");
        };
        assert_eq!(got, sent);
        let mut larger = snapshot();
        larger.data.push(0);
        let refusal = refused(encode_request(&Request::InstallSnapshot(larger)));
        assert!(refusal.contains("a snapshot chunk of"), "{refusal}");
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let good = encode_request(&Request::AppendEntries(append()));
        assert!(refused(Bytes::from_static(&[2, 0])).contains("5-byte head"));
        assert!(
            refused(Bytes::from_static(&[99, 0, 0, 0, 2, b'{', b'}']))
                .contains("unknown request kind 99")
        );
        assert!(refused(Bytes::from_static(&[2, 0xff, 0xff, 0xff, 0xff])).contains("header of"));
        assert!(refused(good.slice(..good.len() - 3)).contains("claims"));
        let mut trailing = BytesMut::from(&good[..]);
        trailing.put_u8(0);
        assert!(refused(trailing.freeze()).contains("after the request"));
        // A batch whose CRC no longer matches.
        let mut damaged = BytesMut::from(&good[..]);
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        assert!(refused(damaged.freeze()).contains("entry 12's batch"), "damaged batch");
        // Too many entries for one message.
        let mut many = append();
        many.entries = (0..ENTRIES_PER_MESSAGE_MAX + 1)
            .map(|i| Entry { log_id: log_id(4, 10 + i), payload: EntryPayload::Blank })
            .collect();
        assert!(
            refused(encode_request(&Request::AppendEntries(many))).contains("more than the limit")
        );
        let mut huge = BytesMut::from(&[2u8, 0, 0, 0, 0][..]);
        huge.resize(MESSAGE_BYTES_MAX + 1, 0);
        assert!(refused(huge.freeze()).contains("more than the limit"));
    }

    #[test]
    fn a_read_and_its_answer_survive_their_encoding_and_a_read_past_the_limits_is_refused() {
        for read in [
            PeerRead::Records { offset: 7, bytes_max: 1024, wait_ms: 500 },
            PeerRead::Timestamp { timestamp_ms: 1_700_000_000_000 },
        ] {
            match decode_request(encode_request(&Request::Read(read.clone()))) {
                Ok(Request::Read(decoded)) => assert_eq!(decoded, read),
                other => panic!("{other:?}"),
            }
        }
        let refused = |read| decode_request(encode_request(&Request::Read(read))).unwrap_err();
        let big = PeerRead::Records { offset: 0, bytes_max: PEER_READ_BYTES_MAX + 1, wait_ms: 0 };
        assert!(refused(big).to_string().contains("more than the limit"));
        let wait_ms = PEER_READ_WAIT_MAX.as_millis() as u32 + 1;
        let long = PeerRead::Records { offset: 0, bytes_max: 0, wait_ms };
        assert!(refused(long).to_string().contains("more than the limit"));

        let head =
            ReadHead { next_offset: 9, log_start_offset: 2, log_end_offset: 12, size_bytes: 4096 };
        let answer = ReadAnswer { head, bytes: kafka_batch() };
        let decoded = decode_read_answer(encode_read_answer(Ok(answer.clone()))).unwrap();
        assert_eq!(decoded, Ok(answer));
        let stopped = crate::ProposeError::Stopped("gone".into());
        let decoded = decode_read_answer(encode_read_answer(Err(stopped.clone()))).unwrap();
        assert_eq!(decoded, Err(stopped));
        let refusal = encode_refusal(&InvalidMessage("a bad read request".into()));
        let error = decode_read_answer(refusal).unwrap_err().to_string();
        assert!(error.contains("the peer refused it: a bad read request"), "{error}");
        let cut = decode_read_answer(Bytes::from_static(&[0, 0, 1, 0, b'x'])).unwrap_err();
        assert!(cut.to_string().contains("head of 256 bytes"), "{cut}");
    }

    /// The fuzz target's seeds (`fuzz/seeds/peer_message`): one message of each kind.
    #[test]
    fn the_fuzz_seeds_are_messages_that_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/peer_message");
        let seeds: Vec<_> = std::fs::read_dir(dir).expect("the seeds").collect();
        assert!(seeds.len() >= 2, "seeds in {dir}");
        for seed in seeds {
            let path = seed.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            check_message(Bytes::from(bytes)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    #[test]
    fn a_refusal_reaches_the_sender_as_an_error() {
        let refusal = encode_refusal(&InvalidMessage("a bad vote request".into()));
        let error = decode_response::<(), ()>(&refusal).unwrap_err().to_string();
        assert!(error.contains("the peer refused it: a bad vote request"), "{error}");
    }
}
