//! Password hashing with scrypt, off the async executor.
//!
//! A fixed pool of threads takes [`HashTask`]s from a bounded queue; the core counts the jobs it has
//! queued and answers SERVER_BUSY past the limit, so a burst of logins waits here, on these threads,
//! and never slows message delivery. Hashes are PHC strings (`$scrypt$ln=15,r=8,p=1$salt$hash`), so
//! changing the cost later still verifies old hashes.
//!
//! Each task carries a [`Cancel`] flag that the core sets when the task's connection closes. A
//! thread looks at it before it starts the hash: a cancelled task costs nothing, so hashes queued by
//! connections that are gone (an attack that has stopped) do not keep the queue busy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use scrypt::errors::InvalidParams;
use scrypt::password_hash::phc::PasswordHash;
use scrypt::password_hash::{PasswordHasher, PasswordVerifier};
use scrypt::{Params, Scrypt};

use crate::proto::name::Password;

/// Work for a hashing thread.
#[derive(Debug)]
pub enum HashJob {
    /// Hash a new password (REGISTER).
    Hash(Password),
    /// Check a password against a stored PHC string (LOGIN, UNREGISTER).
    Verify(Password, Arc<str>),
    /// Check `old` against `phc` and, if it matches, hash `new` (PASSWORD): one job, so a password
    /// change waits in the hashing queue once.
    Rehash {
        old: Password,
        phc: Arc<str>,
        new: Password,
    },
}

/// The result of a [`HashJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOutcome {
    Hashed(String),
    Verified(bool),
    /// The new password's hash, or `None` when the old password did not match.
    Rehashed(Option<String>),
    /// The hash could not be computed or the stored string could not be read.
    Failed(String),
    /// The task was cancelled before a thread started it; nothing was computed.
    Cancelled,
}

/// Set by the core when a hash is no longer wanted (its connection closed); shared with the task.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Marks the task as unwanted.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`Cancel::cancel`] was called on any clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A job and its cancel flag, as queued for the hashing threads.
#[derive(Debug)]
pub struct HashTask {
    /// The work.
    pub job: HashJob,
    /// Checked before the work starts.
    pub cancel: Cancel,
}

impl HashTask {
    /// Runs the task with `hasher`, unless it was cancelled (blocking: call it from a hashing
    /// thread).
    pub fn run(&self, hasher: &Hasher) -> HashOutcome {
        if self.cancel.is_cancelled() {
            return HashOutcome::Cancelled;
        }
        hasher.run(&self.job)
    }
}

/// scrypt with the configured cost.
#[derive(Clone, Debug)]
pub struct Hasher {
    params: Params,
}

impl Hasher {
    /// A hasher with cost `2^log_n`, block size `r` and parallelism `p`.
    pub fn new(log_n: u8, r: u32, p: u32) -> Result<Hasher, InvalidParams> {
        Ok(Hasher {
            params: Params::new(log_n, r, p)?,
        })
    }

    /// Runs one job (blocking: call it from a hashing thread, never from the executor).
    pub fn run(&self, job: &HashJob) -> HashOutcome {
        match job {
            HashJob::Hash(pw) => self.hash(pw),
            HashJob::Verify(pw, phc) => Self::verify(pw, phc),
            HashJob::Rehash { old, phc, new } => match Self::verify(old, phc) {
                HashOutcome::Verified(true) => match self.hash(new) {
                    HashOutcome::Hashed(h) => HashOutcome::Rehashed(Some(h)),
                    other => other,
                },
                HashOutcome::Verified(false) => HashOutcome::Rehashed(None),
                other => other,
            },
        }
    }

    fn hash(&self, pw: &Password) -> HashOutcome {
        match Scrypt::from(self.params).hash_password(pw.expose().as_bytes()) {
            Ok(h) => HashOutcome::Hashed(h.to_string()),
            Err(e) => HashOutcome::Failed(format!("hashing failed: {e}")),
        }
    }

    fn verify(pw: &Password, phc: &str) -> HashOutcome {
        match PasswordHash::new(phc) {
            // The stored hash carries its own parameters; verification uses those.
            Ok(h) => HashOutcome::Verified(
                Scrypt::new()
                    .verify_password(pw.expose().as_bytes(), &h)
                    .is_ok(),
            ),
            Err(e) => HashOutcome::Failed(format!("stored hash unreadable: {e}")),
        }
    }

    /// A hash of a random password, verified against when a LOGIN names an unknown account so that
    /// the reply takes as long as for a known one.
    pub fn dummy_phc(&self) -> String {
        let seed = scrypt::password_hash::generate_salt();
        let pw = Password::unchecked(&format!("{seed:02x?}"));
        match self.run(&HashJob::Hash(pw)) {
            HashOutcome::Hashed(h) => h,
            // Unreachable with valid parameters; a string that never verifies is just as good.
            _ => "$scrypt$ln=4,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        }
    }
}

/// One finished job.
pub type Finished = (u64, HashOutcome);

/// Starts `threads` hashing threads fed by `jobs`; each result goes to `done`. The threads exit when
/// the job channel closes (also those already started when starting one fails).
pub fn spawn_pool<F>(
    hasher: Hasher,
    threads: usize,
    jobs: async_channel::Receiver<(u64, HashTask)>,
    done: F,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>>
where
    F: Fn(Finished) + Send + Sync + 'static,
{
    let done = Arc::new(done);
    (0..threads.max(1))
        .map(|i| {
            let (jobs, done, hasher) = (jobs.clone(), done.clone(), hasher.clone());
            std::thread::Builder::new()
                .name(format!("chatd-hash-{i}"))
                .spawn(move || {
                    while let Ok((ticket, task)) = jobs.recv_blocking() {
                        done((ticket, task.run(&hasher)));
                    }
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = Hasher::new(4, 8, 1).unwrap();
        let pw = Password::parse("correct-horse").unwrap();
        let HashOutcome::Hashed(phc) = h.run(&HashJob::Hash(pw.clone())) else {
            panic!()
        };
        assert!(phc.starts_with("$scrypt$ln=4,r=8,p=1$"));
        assert!(!phc.contains("correct-horse"));
        let phc: Arc<str> = phc.into();
        assert_eq!(
            h.run(&HashJob::Verify(pw, phc.clone())),
            HashOutcome::Verified(true)
        );
        let wrong = Password::parse("wrong-horse").unwrap();
        assert_eq!(
            h.run(&HashJob::Verify(wrong, phc)),
            HashOutcome::Verified(false)
        );
        assert!(matches!(
            h.run(&HashJob::Verify(Password::unchecked("x"), "garbage".into())),
            HashOutcome::Failed(_)
        ));
        let d: Arc<str> = h.dummy_phc().into();
        assert_eq!(
            h.run(&HashJob::Verify(Password::unchecked("x"), d)),
            HashOutcome::Verified(false)
        );
    }

    #[test]
    fn rehash_checks_the_old_password_then_hashes_the_new_one() {
        let h = Hasher::new(4, 8, 1).unwrap();
        let old = Password::parse("old-password").unwrap();
        let new = Password::parse("new-password").unwrap();
        let HashOutcome::Hashed(phc) = h.run(&HashJob::Hash(old.clone())) else {
            panic!()
        };
        let phc: Arc<str> = phc.into();
        let wrong = HashJob::Rehash {
            old: new.clone(),
            phc: phc.clone(),
            new: new.clone(),
        };
        assert_eq!(h.run(&wrong), HashOutcome::Rehashed(None));
        let right = HashJob::Rehash {
            old: old.clone(),
            phc,
            new: new.clone(),
        };
        let HashOutcome::Rehashed(Some(changed)) = h.run(&right) else {
            panic!()
        };
        let changed: Arc<str> = changed.into();
        assert_eq!(
            h.run(&HashJob::Verify(new, changed.clone())),
            HashOutcome::Verified(true)
        );
        assert_eq!(
            h.run(&HashJob::Verify(old, changed)),
            HashOutcome::Verified(false)
        );
    }

    /// The failure this guards against: hashes queued by connections that had already closed were
    /// still computed, keeping the queue full for half a minute after an attack stopped.
    #[test]
    fn a_cancelled_task_is_not_computed() {
        let h = Hasher::new(4, 8, 1).unwrap();
        let task = HashTask {
            job: HashJob::Hash(Password::parse("correct-horse").unwrap()),
            cancel: Cancel::default(),
        };
        assert!(matches!(task.run(&h), HashOutcome::Hashed(_)));
        let shared = task.cancel.clone();
        shared.cancel();
        assert!(task.cancel.is_cancelled());
        assert_eq!(task.run(&h), HashOutcome::Cancelled);
        // Through the pool: nothing is hashed for a cancelled task.
        let (tx, rx) = async_channel::bounded(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let pool = spawn_pool(h, 1, rx, move |r| done_tx.send(r).unwrap()).unwrap();
        tx.send_blocking((7, task)).unwrap();
        assert_eq!(done_rx.recv().unwrap(), (7, HashOutcome::Cancelled));
        drop(tx);
        for t in pool {
            t.join().unwrap();
        }
    }
}
