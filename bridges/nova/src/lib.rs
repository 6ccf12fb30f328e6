//! `firehose-nova`: OpenStack nova notifications from RabbitMQ onto the
//! firehose, at least once, on the shared publishing runtime.
//!
//! - [`config`]: deployments from flags or `[[source.deployments]]`.
//! - [`source`]: a consumer per deployment on its own queue; ack after PUBACK;
//!   service state as retained messages; dead letters.

pub mod config;
pub mod source;
