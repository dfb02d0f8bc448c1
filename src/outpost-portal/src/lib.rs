//! `outpost-portal`: the reference control plane. The sensor API and admin API over
//! HTTPS (rustls), enrollment tokens, the leased job queue, sensor status, phase logs
//! and reports, on SQLite or PostgreSQL.

pub mod api;
pub mod auth;
pub mod bundles;
pub mod error;
pub mod feed_api;
pub mod feeds;
pub mod gateway;
pub mod peer_sync;
pub mod sealed;
pub mod server;
pub mod settings;
pub mod shared;
pub mod store;
pub mod tls;
pub mod updates;

pub use server::{run, Portal};
pub use settings::Settings;
