//! InitProducerId: Kafka's idempotent producers get their producer id from Spool's
//! [`ProducerIds`](crate::idempotence::ProducerIds), the same durable allocator gRPC's
//! `InitProducer` uses. The producer's batches then carry the id, an epoch and per-partition
//! sequence numbers in their RecordBatch headers, and each partition's writer checks them as
//! it checks gRPC's (`spool_broker::producer`): a retry of one of the last five batches is
//! answered with its original offsets, a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch
//! INVALID_PRODUCER_EPOCH (see `codes`).
//!
//! Only idempotence is served, not transactions: a request with a transactional id gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which clients treat as fatal rather than retrying
//! (an empty one is INVALID_REQUEST, as in Kafka).
//!
//! A request without a transactional id always gets a new id at epoch 0, even when it names
//! the id and epoch it had (version 3 on, KIP-360): Kafka's brokers do the same for
//! non-transactional producers, which bump their epoch themselves. A new id serves the same
//! purpose as a bumped epoch (the producer's sequences start again at 0 in every partition),
//! and each partition's table accepts either.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Shared;
use super::codes::error_code;

pub(super) async fn init_producer_id(
    shared: &Shared,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.as_ref().is_some_and(|id| id.is_empty()) {
        // As Kafka: an empty transactional id is neither none nor a transactional producer.
        return refused(ResponseError::InvalidRequest.code());
    }
    if let Some(transactional_id) = &request.transactional_id {
        tracing::debug!(
            transactional_id = transactional_id.as_str(),
            "InitProducerId with a transactional id refused: transactions are not served"
        );
        return refused(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    match shared.producer_ids.allocate().await {
        Ok(producer_id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0),
        Err(error) => refused(error_code(&error)),
    }
}
