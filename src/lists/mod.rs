//! Threat-list formats and sources: parsing, downloading, the on-disk cache and refresh.

mod background;
pub mod fetch;
pub mod guard;
pub mod load;
pub mod parse;
pub mod refresh;
mod schedule;
mod source;
pub mod status;
pub mod store;
