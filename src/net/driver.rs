//! The core task: the one task that owns the [`Core`], the production peer of the simulator in
//! `sim.rs`.
//!
//! It feeds the core events from two queues, results (store and hashing threads) before input
//! (connections), and carries out the jobs the core returns: store ops to the store worker, hash
//! jobs to the hashing pool. It stops taking input while too many store ops are in flight, so a
//! slow disk slows readers through TCP instead of growing a queue. The clock is read here, once
//! per event, and handed to the core; about once a [`TICK_INTERVAL`] the core also gets an
//! [`Event::Tick`], busy or not, so that what depends on time alone (idle connections) happens.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use futures_lite::{future, StreamExt};
use smol::Timer;

use super::ServerError;
use crate::auth::HashTask;
use crate::config::{MAX_STORE_BATCH, MAX_STORE_INFLIGHT, TICK_INTERVAL};
use crate::core::{BusOut, Core, Event, Job};
use crate::store::worker::{StoreJob, Ticket};
use crate::store::ReadOp;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs the core until the server stops: after [`Event::Shutdown`] (or once every reader is gone)
/// it goes on until every store op in flight has finished, then returns. It ends early only on a
/// fatal error.
pub(super) async fn core_loop(
    mut core: Core,
    events: Receiver<Event>,
    done: Receiver<Event>,
    store: Sender<StoreJob>,
    fresh: Sender<(Ticket, ReadOp)>,
    hashes: Sender<(u64, HashTask)>,
    bus: Option<Sender<BusOut>>,
) -> Result<(), ServerError> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut stopping = false;
    let mut ticks = Timer::interval(TICK_INTERVAL);
    let mut last_tick = Instant::now();
    loop {
        // While writes fail, what is in flight may wait for a long time; none of it was
        // acknowledged, so a stopping server does not wait for it (the store worker makes a last
        // try, and says in the log what it could not write).
        if stopping && (core.store_inflight() == 0 || core.store_failing()) {
            return Ok(());
        }
        // Results first; reader input only while the store keeps up; a tick when nothing else
        // happened for a while.
        let tick = async {
            ticks.next().await;
            Ok(Event::Tick)
        };
        let event = if let Ok(e) = done.try_recv() {
            e
        } else if stopping
            || (!core.store_failing()
                && core.store_inflight() + MAX_STORE_BATCH >= MAX_STORE_INFLIGHT)
        {
            // While writes fail, input keeps coming: new writes are refused at once and reads go
            // to the fresh queue, so what is in flight does not grow with it.
            match future::or(done.recv(), tick).await {
                Ok(e) => e,
                Err(_) => return Ok(()),
            }
        } else if let Ok(e) = events.try_recv() {
            // Input waiting and no result: taken without a wait. The futures below each leave a
            // listener on their channel when it is empty (`done` is, most of the time), which
            // cost about 1,000 instructions per direct message when made for every line.
            e
        } else {
            match future::or(future::or(done.recv(), events.recv()), tick).await {
                Ok(e) => e,
                Err(_) => {
                    // No more readers: the server is stopping.
                    stopping = true;
                    continue;
                }
            }
        };
        if !matches!(event, Event::Tick) && last_tick.elapsed() >= TICK_INTERVAL {
            // A busy core still looks at the clock about once a tick.
            last_tick = Instant::now();
            core.handle(now_ms(), Event::Tick, &mut jobs);
        } else if matches!(event, Event::Tick) {
            last_tick = Instant::now();
        }
        stopping |= matches!(event, Event::Shutdown);
        core.handle(now_ms(), event, &mut jobs);
        for job in jobs.drain(..) {
            match job {
                // Cannot wait long: the store thread never waits on the core (see `done`).
                Job::Store(j) => {
                    if store.send(j).await.is_err() {
                        return Err(ServerError::Internal("the store thread has stopped"));
                    }
                }
                Job::Read(t, r) => {
                    if fresh.send((t, r)).await.is_err() {
                        return Err(ServerError::Internal("the store thread has stopped"));
                    }
                }
                // The core never queues more hashes than the channel holds.
                Job::Hash(t, h) => {
                    if hashes.try_send((t, h)).is_err() {
                        return Err(ServerError::Internal("the hashing queue overflowed"));
                    }
                }
                // Never waits: the NATS thread takes each word without waiting on NATS, so the
                // queue fills only if that thread is stuck; a word lost then is logged.
                Job::Bus(word) => {
                    if let Some(bus) = &bus {
                        if let Err(e) = bus.try_send(word) {
                            log::error!("cluster: the NATS thread is not keeping up; lost {e:?}");
                        }
                    }
                }
            }
        }
        if let Some(e) = core.fatal() {
            return Err(ServerError::Storage(e.to_owned()));
        }
    }
}
