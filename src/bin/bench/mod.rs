//! Parts of `chatd-bench`: the client side of a connection ([`client`]), the server under test
//! ([`server`]), what is read from `/proc` ([`system`]) and the scenarios themselves
//! ([`scenarios`], and [`compress`] for COMPRESS DEFLATE).
//!
//! The load generator runs on one smol executor, driven by `--client-threads` threads (one by
//! default: on a small machine every core the client takes is one the server does not get).

pub mod client;
pub mod compress;
pub mod scenarios;
pub mod server;
pub mod system;

use std::future::Future;

use smol::{Executor, Task};

/// The executor every client task runs on.
pub static EXECUTOR: Executor<'static> = Executor::new();

/// Runs `future` as a task of the client's executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    EXECUTOR.spawn(future)
}
