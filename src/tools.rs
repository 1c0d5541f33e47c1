//! The operator's tools: `chatd backup`, `chatd check`, `chatd health` and `chatd adduser`.
//!
//! Each prints what it did, or what is wrong, in a sentence that names the file or the address,
//! and exits 0 on success and 1 otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::auth::{HashJob, HashOutcome, Hasher};
use crate::cli::{AdduserArgs, BackupArgs, CheckArgs, HealthArgs, Tool};
use crate::cluster::{ClusterOptions, ClusterStore};
use crate::config::{SCRYPT_P, SCRYPT_R};
use crate::net::ops::control_path;
use crate::proto::name::{Password, Skeleton};
use crate::store::backup::{check, Report};
use crate::store::redb::RedbStore;
use crate::store::{AccountRecord, Store, StoreError, StoreOp, StoreReply};

/// How long `chatd health` waits for the server's answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one tool.
pub fn run(tool: Tool) -> ExitCode {
    let result = match tool {
        Tool::Backup(a) => backup(&a),
        Tool::Check(a) => check_db(&a),
        Tool::Health(a) => health(&a),
        Tool::Adduser(a) => adduser(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a check's report; an error when it found a problem.
fn print_report(what: &Path, report: &Report) -> Result<(), String> {
    if report.problems.is_empty() {
        println!("{}: fine: {}", what.display(), report.summary);
        return Ok(());
    }
    for p in &report.problems {
        println!("{}: {p}", what.display());
    }
    if report.more > 0 {
        println!("{}: ... and {} more problems", what.display(), report.more);
    }
    Err(format!(
        "{} is damaged: {} problems",
        what.display(),
        report.problems.len() + report.more
    ))
}

fn backup(a: &BackupArgs) -> Result<(), String> {
    let out = std::path::absolute(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let ctl = control_path(&a.db);
    let mut stream = std::os::unix::net::UnixStream::connect(&ctl).map_err(|e| {
        format!(
            "cannot reach the server of {} through {}: {e} (is it running, with this --db?)",
            a.db.display(),
            ctl.display()
        )
    })?;
    writeln!(stream, "BACKUP {}", out.display()).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| format!("reading the server's answer: {e}"))?;
    let reply = reply.trim_end();
    match reply.strip_prefix("OK ") {
        Some(_) => {}
        None => {
            return Err(format!(
                "the server made no backup: {}",
                reply.strip_prefix("ERR ").unwrap_or(reply)
            ))
        }
    }
    // The copy is verified as `chatd check` would, now that no one has it open.
    let report = check(&out).map_err(|e| e.to_string())?;
    print_report(&out, &report)?;
    println!(
        "backup of {} written to {} and verified",
        a.db.display(),
        out.display()
    );
    Ok(())
}

fn check_db(a: &CheckArgs) -> Result<(), String> {
    let report = check(&a.db).map_err(|e| match e.advice() {
        Some(advice) => format!("{e}; {advice}"),
        None => e.to_string(),
    })?;
    print_report(&a.db, &report)
}

fn health(a: &HealthArgs) -> Result<(), String> {
    let opts = crate::client::ClientOptions {
        addr: a.addr.clone(),
        tls: a.tls,
        ca: None,
        insecure: a.tls,
        compress: false,
        direct: Default::default(),
    };
    let connector = crate::client::connector(&opts)?;
    let answered = smol::block_on(futures_lite::future::or(
        async {
            use futures_lite::AsyncWriteExt;
            let mut stream = connector
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", a.addr))?
                .stream;
            stream
                .write_all(b"PING health\n")
                .await
                .map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut lines = crate::client::conn::LineReader::new(stream);
            loop {
                match lines.next().await {
                    Ok(Some(crate::client::conn::Incoming::Line(l))) if l == "PONG health" => {
                        return Ok(());
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(format!("{} closed the connection", a.addr)),
                    Err(e) => return Err(format!("reading from {}: {e}", a.addr)),
                }
            }
        },
        async {
            smol::Timer::after(HEALTH_TIMEOUT).await;
            Err(format!(
                "{} did not answer PING within {} s",
                a.addr,
                HEALTH_TIMEOUT.as_secs()
            ))
        },
    ));
    answered?;
    println!("{}: healthy", a.addr);
    Ok(())
}

fn adduser(a: &AdduserArgs) -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = Password::parse(line.trim_end_matches(['\n', '\r']))
        .map_err(|e| format!("the password: {e}"))?;
    let hasher = Hasher::new(a.scrypt_log_n, SCRYPT_R, SCRYPT_P).map_err(|e| e.to_string())?;
    let advised = |e: StoreError| match e.advice() {
        Some(advice) => format!("{e}; {advice}"),
        None => e.to_string(),
    };
    // In a cluster the account goes through the log, with REGISTER's compare-and-set; the names
    // taken are read from a node's index built for the purpose in a directory of its own, which
    // goes when done.
    let scratch = match &a.cluster {
        Some(_) => Some(Scratch::new()?),
        None => None,
    };
    let (mut store, snapshot, place): (Box<dyn Store>, _, String) = match (&a.cluster, &scratch) {
        (Some(urls), Some(dir)) => {
            let opts = ClusterOptions::new(urls, a.cluster_replicas);
            let (store, snapshot) =
                ClusterStore::open(&opts, &dir.0.join("adduser.redb")).map_err(advised)?;
            (Box::new(store), snapshot, format!("the cluster at {urls}"))
        }
        _ => {
            let (store, snapshot) = RedbStore::open(&a.db).map_err(advised)?;
            (Box::new(store), snapshot, a.db.display().to_string())
        }
    };
    let name = a.name.as_str();
    let key = a.name.key();
    let skeleton = a.name.skeleton();
    let taken = snapshot
        .accounts
        .iter()
        .map(|r| r.name.as_str())
        .chain(snapshot.retired.iter().map(|r| r.name.as_str()))
        .find(|n| crate::store::key_of(n) == key.as_str() || Skeleton::of(n) == skeleton);
    if let Some(t) = taken {
        return Err(format!(
            "the name {name} is taken (by {t}, or looks like it)"
        ));
    }
    let HashOutcome::Hashed(phc) = hasher.run(&HashJob::Hash(password)) else {
        return Err("hashing the password failed".into());
    };
    let record = AccountRecord {
        name: name.to_owned(),
        phc,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let replies = store
        .write(&[StoreOp::CreateAccount(record)])
        .map_err(|e| e.to_string())?;
    if replies.first() == Some(&StoreReply::Taken) {
        return Err(format!(
            "the name {name} is taken (a node of the cluster registered it just now)"
        ));
    }
    println!("account {name} created in {place}");
    Ok(())
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| format!("no randomness for a file name: {e}"))?;
        let dir =
            std::env::temp_dir().join(format!("chatd-adduser-{:016x}", u64::from_le_bytes(b)));
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make the directory {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
