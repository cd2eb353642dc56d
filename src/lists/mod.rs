//! Threat-list formats and sources.

pub mod load;
pub mod parse;
