//! XML in and out: a strict escaping writer and a bounded pull reader.

pub(crate) mod read;
pub(crate) mod write;
