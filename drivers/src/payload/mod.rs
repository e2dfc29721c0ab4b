//! Payload formats and addressing shared by the drivers that receive
//! messages (MQTT and CoAP), so that neither imports the other:
//!
//! - [`decode`]: plain values, JSON documents and SenML packs (RFC 8428)
//!   into samples, with rejections that name their reason.
//! - [`topic`]: topic and path patterns with `{device}`/`{point}` captures.

pub mod decode;
pub mod topic;
