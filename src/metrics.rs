//! The server's figures, in one registry: what `STATS` shows an admin and what `/metrics` shows a
//! Prometheus scraper are read from the same [`Metrics`], so the two cannot disagree.
//!
//! Who writes what: every figure is written by the core task alone (it sees every connection, login,
//! message, hash job and store result, and the store worker reports each commit's size and time to
//! it); readers (the `STATS` handler, the HTTP task serving `/metrics`) only load. The values are
//! atomics so that a reader on another thread needs no lock and can never slow the core down.
//!
//! `Metrics::families` lists every figure with its Prometheus name, help text and type;
//! [`Metrics::prometheus`] renders them in the Prometheus text exposition format (version 0.0.4),
//! and [`Metrics::stats`] as the name and value pairs of `STAT` lines. Nothing is counted per user
//! or per address: the registry has a fixed size.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The upper bounds of the commit-time buckets, in microseconds (the last bucket is `+Inf`).
const COMMIT_US_BUCKETS: [u64; 10] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];
/// The upper bounds of the commit-size buckets, in store ops per commit.
const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 16, 64, 256, 512, 1024];

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets, with its sum and count (a Prometheus histogram). Values are
/// whole units (microseconds, ops); `scale` turns them into the unit shown (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, then the `+Inf` bucket; each value is counted in its first bucket only
    /// (the cumulative counts are made when rendering).
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
    /// The last value observed.
    last: AtomicU64,
    /// Divisor from the stored unit to the shown one (1 000 000 for microseconds shown as seconds).
    scale: u64,
}

impl Histogram {
    fn new(bounds: &'static [u64], scale: u64) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            last: AtomicU64::new(0),
            scale,
        }
    }

    /// Counts one value.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last.store(v, Ordering::Relaxed);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum, in the stored unit.
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }
}

/// What kind of message a count is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// MSG.
    Direct,
    /// GROUP.
    Group,
    /// ALL.
    Broadcast,
    /// MSG to a room.
    Room,
}

/// How a login proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginKind {
    /// LOGIN, with a password.
    Password,
    /// RESUME, with a device token.
    Token,
}

/// Every figure of the server. See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    /// When the server started, milliseconds since the Unix epoch.
    pub started_ms: AtomicI64,
    /// Connections open now (greeted, not yet closed).
    pub connections: Gauge,
    /// Connections accepted since the start.
    pub connections_opened: Counter,
    /// Accounts with at least one connection logged in.
    pub accounts_online: Gauge,
    /// Logins with a password.
    pub logins_password: Counter,
    /// Logins with a device token.
    pub logins_token: Counter,
    /// Failed LOGINs and RESUMEs (wrong credentials).
    pub logins_failed: Counter,
    /// Messages stored, by kind.
    pub messages_direct: Counter,
    /// GROUP messages stored.
    pub messages_group: Counter,
    /// ALL messages stored.
    pub messages_broadcast: Counter,
    /// Room messages stored.
    pub messages_room: Counter,
    /// Messages per second over the last minute, in thousandths.
    pub messages_per_second_milli: Gauge,
    /// MESSAGE lines queued for connections as messages arrived (a login's backlog not counted).
    pub deliveries: Counter,
    /// Password hashes queued or running.
    pub hash_queue: Gauge,
    /// Connections disconnected because their outbox overflowed (slow consumers).
    pub outbox_drops: Counter,
    /// Store ops sent and not yet answered.
    pub store_queue: Gauge,
    /// Commits made.
    pub commit_seconds: Histogram,
    /// Store ops per commit.
    pub commit_batch: Histogram,
    /// Times writes started to fail, and reads that could not be answered.
    pub storage_errors: Counter,
    /// 1 while writes fail, else 0.
    pub storage_failing: Gauge,
    /// Size of the database file in bytes, as of the last commit.
    pub database_bytes: Gauge,
    /// Accounts registered.
    pub accounts: Gauge,
    /// Accounts suspended.
    pub accounts_suspended: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started_ms: AtomicI64::new(0),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            accounts_online: Gauge::default(),
            logins_password: Counter::default(),
            logins_token: Counter::default(),
            logins_failed: Counter::default(),
            messages_direct: Counter::default(),
            messages_group: Counter::default(),
            messages_broadcast: Counter::default(),
            messages_room: Counter::default(),
            messages_per_second_milli: Gauge::default(),
            deliveries: Counter::default(),
            hash_queue: Gauge::default(),
            outbox_drops: Counter::default(),
            store_queue: Gauge::default(),
            commit_seconds: Histogram::new(&COMMIT_US_BUCKETS, 1_000_000),
            commit_batch: Histogram::new(&BATCH_BUCKETS, 1),
            storage_errors: Counter::default(),
            storage_failing: Gauge::default(),
            database_bytes: Gauge::default(),
            accounts: Gauge::default(),
            accounts_suspended: Gauge::default(),
        }
    }
}

/// A figure's value, as it is rendered.
#[derive(Clone, Copy, Debug)]
enum Value<'a> {
    /// A whole number.
    Int(i64),
    /// Thousandths, shown as a decimal.
    Milli(i64),
    /// A histogram.
    Histogram(&'a Histogram),
}

/// The Prometheus type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name (without the `chatd_` prefix), help, type and samples (a label
/// value, if the family has a label, and the value).
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label: Option<&'static str>,
    samples: Vec<(Option<&'static str>, Value<'a>)>,
}

/// Prometheus metric names start with this.
const PREFIX: &str = "chatd_";

impl Metrics {
    /// Counts one stored message of `kind`.
    pub fn message(&self, kind: MessageKind) {
        match kind {
            MessageKind::Direct => self.messages_direct.inc(),
            MessageKind::Group => self.messages_group.inc(),
            MessageKind::Broadcast => self.messages_broadcast.inc(),
            MessageKind::Room => self.messages_room.inc(),
        }
    }

    /// Every message stored, of any kind.
    pub fn messages(&self) -> u64 {
        self.messages_direct.get()
            + self.messages_group.get()
            + self.messages_broadcast.get()
            + self.messages_room.get()
    }

    /// Counts one login.
    pub fn login(&self, kind: LoginKind) {
        match kind {
            LoginKind::Password => self.logins_password.inc(),
            LoginKind::Token => self.logins_token.inc(),
        }
    }

    /// Counts one commit: how many ops it carried and how long it took.
    pub fn commit(&self, ops: u64, micros: u64) {
        self.commit_batch.observe(ops);
        self.commit_seconds.observe(micros);
    }

    /// Every family, in the order they are shown; `now_ms` gives the uptime.
    fn families(&self, now_ms: i64) -> Vec<Family<'_>> {
        let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let one = |name, help, kind, v| Family {
            name,
            help,
            kind,
            label: None,
            samples: vec![(None, v)],
        };
        let uptime_ms = now_ms
            .saturating_sub(self.started_ms.load(Ordering::Relaxed))
            .max(0);
        vec![
            one(
                "uptime_seconds",
                "Seconds since the server started.",
                Kind::Gauge,
                Value::Int(uptime_ms / 1000),
            ),
            one(
                "connections",
                "Connections open now, plain and TLS.",
                Kind::Gauge,
                Value::Int(self.connections.get()),
            ),
            one(
                "connections_opened_total",
                "Connections accepted and greeted since the start.",
                Kind::Counter,
                int(self.connections_opened.get()),
            ),
            one(
                "accounts_online",
                "Accounts with at least one connection logged in.",
                Kind::Gauge,
                Value::Int(self.accounts_online.get()),
            ),
            one(
                "accounts",
                "Accounts registered.",
                Kind::Gauge,
                Value::Int(self.accounts.get()),
            ),
            one(
                "accounts_suspended",
                "Accounts an operator suspended.",
                Kind::Gauge,
                Value::Int(self.accounts_suspended.get()),
            ),
            Family {
                name: "logins_total",
                help: "Successful logins, by how the connection proved who it is.",
                kind: Kind::Counter,
                label: Some("via"),
                samples: vec![
                    (Some("password"), int(self.logins_password.get())),
                    (Some("token"), int(self.logins_token.get())),
                ],
            },
            one(
                "logins_failed_total",
                "LOGINs and RESUMEs refused for wrong credentials.",
                Kind::Counter,
                int(self.logins_failed.get()),
            ),
            Family {
                name: "messages_total",
                help: "Messages stored, by kind (MSG to a user, GROUP, ALL, MSG to a room).",
                kind: Kind::Counter,
                label: Some("kind"),
                samples: vec![
                    (Some("msg"), int(self.messages_direct.get())),
                    (Some("group"), int(self.messages_group.get())),
                    (Some("all"), int(self.messages_broadcast.get())),
                    (Some("room"), int(self.messages_room.get())),
                ],
            },
            one(
                "messages_per_second",
                "Messages stored per second, over the last minute.",
                Kind::Gauge,
                Value::Milli(self.messages_per_second_milli.get()),
            ),
            one(
                "deliveries_total",
                "MESSAGE lines queued for connections as messages arrived (backlogs not counted).",
                Kind::Counter,
                int(self.deliveries.get()),
            ),
            one(
                "hash_queue",
                "Password hashes queued or running.",
                Kind::Gauge,
                Value::Int(self.hash_queue.get()),
            ),
            one(
                "outbox_drops_total",
                "Connections disconnected as slow consumers (their outbox overflowed).",
                Kind::Counter,
                int(self.outbox_drops.get()),
            ),
            one(
                "store_queue_depth",
                "Store operations sent and not yet answered.",
                Kind::Gauge,
                Value::Int(self.store_queue.get()),
            ),
            one(
                "commit_seconds",
                "Time one commit took, fsync included.",
                Kind::Histogram,
                Value::Histogram(&self.commit_seconds),
            ),
            one(
                "commit_batch_ops",
                "Store operations carried by one commit (group commit).",
                Kind::Histogram,
                Value::Histogram(&self.commit_batch),
            ),
            one(
                "storage_errors_total",
                "Times writes started to fail, and reads that could not be answered.",
                Kind::Counter,
                int(self.storage_errors.get()),
            ),
            one(
                "storage_failing",
                "1 while writes to the database fail, else 0.",
                Kind::Gauge,
                Value::Int(self.storage_failing.get()),
            ),
            one(
                "database_bytes",
                "Size of the database file, as of the last commit.",
                Kind::Gauge,
                Value::Int(self.database_bytes.get()),
            ),
        ]
    }

    /// Every figure in the Prometheus text exposition format (version 0.0.4): a `# HELP` and a
    /// `# TYPE` line per family, then its samples.
    pub fn prometheus(&self, now_ms: i64) -> String {
        let mut out = String::new();
        for f in self.families(now_ms) {
            let name = format!("{PREFIX}{}", f.name);
            // Help texts are ours and hold no backslash or newline, which would need escaping.
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (label, value) in &f.samples {
                let labels = match (f.label, label) {
                    (Some(k), Some(v)) => format!("{{{k}=\"{v}\"}}"),
                    _ => String::new(),
                };
                match value {
                    Value::Int(v) => {
                        let _ = writeln!(out, "{name}{labels} {v}");
                    }
                    Value::Milli(v) => {
                        let _ = writeln!(out, "{name}{labels} {}", milli(*v));
                    }
                    Value::Histogram(h) => histogram(&mut out, &name, h),
                }
            }
        }
        out
    }

    /// Every figure as `STAT` name and value pairs: the Prometheus names without `chatd_`, a
    /// labelled sample as `<name>_<label value>`, a histogram as its `_count`, `_sum`, `_avg` and
    /// `_last`.
    pub fn stats(&self, now_ms: i64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in self.families(now_ms) {
            for (label, value) in &f.samples {
                let name = match label {
                    Some(l) => format!("{}_{l}", f.name),
                    None => f.name.to_owned(),
                };
                match value {
                    Value::Int(v) => out.push((name, v.max(&0).to_string())),
                    Value::Milli(v) => out.push((name, milli(*v))),
                    Value::Histogram(h) => {
                        let (count, sum) = (h.count(), h.sum());
                        let avg = sum.checked_div(count).unwrap_or(0);
                        let last = h.last.load(Ordering::Relaxed);
                        out.push((format!("{name}_count"), count.to_string()));
                        out.push((format!("{name}_sum"), scaled(sum, h.scale)));
                        out.push((format!("{name}_avg"), scaled(avg, h.scale)));
                        out.push((format!("{name}_last"), scaled(last, h.scale)));
                    }
                }
            }
        }
        out
    }
}

/// Thousandths as a decimal: `1234` is `1.234`.
fn milli(v: i64) -> String {
    let v = v.max(0);
    format!("{}.{:03}", v / 1000, v % 1000)
}

/// `v` divided by `scale` (1 or a power of ten), as a decimal with as many places as it needs.
fn scaled(v: u64, scale: u64) -> String {
    if scale <= 1 {
        return v.to_string();
    }
    let places = scale.ilog10() as usize;
    format!("{}.{:0places$}", v / scale, v % scale)
}

fn histogram(out: &mut String, name: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            scaled(*bound, h.scale)
        );
    }
    cumulative += h.buckets[h.bounds.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", scaled(h.sum(), h.scale));
    // The count is the +Inf bucket's: both are read from the same loads.
    let _ = writeln!(out, "{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server_line::{is_stat_name, is_stat_value};

    #[test]
    fn histograms_are_cumulative_and_scaled() {
        let m = Metrics::default();
        m.commit(1, 200);
        m.commit(3, 3_000);
        m.commit(2000, 2_000_000);
        let text = m.prometheus(0);
        assert!(
            text.contains("chatd_commit_seconds_bucket{le=\"0.000250\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("chatd_commit_seconds_bucket{le=\"0.005000\"} 2\n"));
        assert!(text.contains("chatd_commit_seconds_bucket{le=\"1.000000\"} 2\n"));
        assert!(text.contains("chatd_commit_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chatd_commit_seconds_sum 2.003200\n"));
        assert!(text.contains("chatd_commit_seconds_count 3\n"));
        assert!(text.contains("chatd_commit_batch_ops_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("chatd_commit_batch_ops_bucket{le=\"+Inf\"} 3\n"));
    }

    #[test]
    fn stats_are_the_same_figures_as_stat_lines() {
        let m = Metrics::default();
        m.started_ms.store(1_000, Ordering::Relaxed);
        m.connections.set(3);
        m.message(MessageKind::Group);
        m.message(MessageKind::Group);
        m.messages_per_second_milli.set(1_500);
        m.commit(4, 1_500);
        let stats = m.stats(61_000);
        let get = |n: &str| {
            stats
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {n} in {stats:?}"))
        };
        assert_eq!(get("uptime_seconds"), "60");
        assert_eq!(get("connections"), "3");
        assert_eq!(get("messages_total_group"), "2");
        assert_eq!(get("messages_per_second"), "1.500");
        assert_eq!(get("commit_seconds_avg"), "0.001500");
        assert_eq!(get("commit_batch_ops_last"), "4");
        for (name, value) in &stats {
            assert!(is_stat_name(name), "{name}");
            assert!(is_stat_value(value), "{name} {value}");
        }
        // Every Prometheus family shows up in STATS.
        let text = m.prometheus(61_000);
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let family = line.split(' ').nth(2).unwrap().trim_start_matches(PREFIX);
            assert!(
                stats.iter().any(|(k, _)| k.starts_with(family)),
                "{family} is not in STATS"
            );
        }
    }
}
