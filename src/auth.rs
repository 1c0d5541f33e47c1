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
//!
//! In memory a hash is a [`Phc`]: the parameters, salt and hash of a PHC string this crate makes,
//! in binary (64 bytes inline, where the string took a block of its own of about 110), which
//! formats back to the very same string.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64ct::{Base64Unpadded, Encoding};

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
    /// Check a password against a stored hash (LOGIN, UNREGISTER).
    Verify(Password, Phc),
    /// Check `old` against `phc` and, if it matches, hash `new` (PASSWORD): one job, so a password
    /// change waits in the hashing queue once.
    Rehash {
        old: Password,
        phc: Phc,
        new: Password,
    },
}

/// Salt bytes in the hashes [`Hasher`] makes (the PHC string's salt, decoded).
const SALT_BYTES: usize = 16;
/// Hash bytes in the hashes [`Hasher`] makes (scrypt's default output length).
const HASH_BYTES: usize = 32;

/// A password hash as kept in memory: a PHC string, held in binary when it is an scrypt hash of
/// the shape [`Hasher`] makes (`$scrypt$ln=L,r=R,p=P$SALT$HASH`, a 16-byte salt and a 32-byte
/// hash) and as the string itself otherwise. It formats ([`fmt::Display`]) to exactly the string
/// it was parsed from, so what is verified and stored is unchanged.
#[derive(Clone, PartialEq, Eq)]
pub enum Phc {
    /// The parts of an scrypt PHC string.
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: [u8; SALT_BYTES],
        hash: [u8; HASH_BYTES],
    },
    /// Any other string, as it is.
    Text(Box<str>),
}

impl Phc {
    /// The hash a PHC string holds: in binary when it formats back to exactly `s`, else `s`.
    pub fn parse(s: &str) -> Phc {
        match Phc::scrypt(s) {
            Some(phc) if phc.to_string() == s => phc,
            _ => Phc::Text(s.into()),
        }
    }

    /// The parts of `$scrypt$ln=L,r=R,p=P$SALT$HASH`, if `s` has that shape and sizes.
    fn scrypt(s: &str) -> Option<Phc> {
        let rest = s.strip_prefix("$scrypt$ln=")?;
        let (log_n, rest) = rest.split_once(",r=")?;
        let (r, rest) = rest.split_once(",p=")?;
        let (p, rest) = rest.split_once('$')?;
        let (salt_b64, hash_b64) = rest.split_once('$')?;
        let mut salt = [0u8; SALT_BYTES];
        let mut hash = [0u8; HASH_BYTES];
        if Base64Unpadded::decode(salt_b64, &mut salt).ok()?.len() != SALT_BYTES
            || Base64Unpadded::decode(hash_b64, &mut hash).ok()?.len() != HASH_BYTES
        {
            return None;
        }
        Some(Phc::Scrypt {
            log_n: log_n.parse().ok()?,
            r: r.parse().ok()?,
            p: p.parse().ok()?,
            salt,
            hash,
        })
    }
}

impl fmt::Display for Phc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phc::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            } => {
                // Unpadded base64 of 16 and 32 bytes: 22 and 43 characters.
                let mut salt_b64 = [0u8; 24];
                let mut hash_b64 = [0u8; 44];
                let salt = Base64Unpadded::encode(salt, &mut salt_b64).map_err(|_| fmt::Error)?;
                let hash = Base64Unpadded::encode(hash, &mut hash_b64).map_err(|_| fmt::Error)?;
                write!(f, "$scrypt$ln={log_n},r={r},p={p}${salt}${hash}")
            }
            Phc::Text(s) => f.write_str(s),
        }
    }
}

/// Shows the PHC string's shape, never the hash.
impl fmt::Debug for Phc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phc::Scrypt { log_n, r, p, .. } => write!(f, "Phc(scrypt ln={log_n},r={r},p={p})"),
            Phc::Text(_) => f.write_str("Phc(text)"),
        }
    }
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
            HashJob::Verify(pw, phc) => Self::verify(pw, &phc.to_string()),
            HashJob::Rehash { old, phc, new } => match Self::verify(old, &phc.to_string()) {
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
        let phc = Phc::parse(&phc);
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
            h.run(&HashJob::Verify(
                Password::unchecked("x"),
                Phc::parse("garbage")
            )),
            HashOutcome::Failed(_)
        ));
        let d = Phc::parse(&h.dummy_phc());
        assert_eq!(
            h.run(&HashJob::Verify(Password::unchecked("x"), d)),
            HashOutcome::Verified(false)
        );
    }

    /// What this guards: a hash kept in binary must verify and be stored as the very string it
    /// came from, whatever that string was.
    #[test]
    fn a_hash_is_kept_in_binary_and_formats_back_to_its_string() {
        let h = Hasher::new(4, 8, 1).unwrap();
        for _ in 0..20 {
            let HashOutcome::Hashed(made) = h.run(&HashJob::Hash(Password::unchecked("pw"))) else {
                panic!()
            };
            let phc = Phc::parse(&made);
            assert!(
                matches!(
                    phc,
                    Phc::Scrypt {
                        log_n: 4,
                        r: 8,
                        p: 1,
                        ..
                    }
                ),
                "{made}"
            );
            assert_eq!(phc.to_string(), made);
        }
        let example =
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        assert!(matches!(Phc::parse(example), Phc::Scrypt { log_n: 16, .. }));
        // Anything that would not format back the same is kept as it is: other algorithms, other
        // sizes, padding, leading zeros, a parameter out of range, another order, garbage.
        for other in [
            "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q==$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$scrypt$ln=016,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$scrypt$ln=256,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$scrypt$r=8,ln=16,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E$",
            "$scrypt$new$7",
            "",
        ] {
            let phc = Phc::parse(other);
            assert!(matches!(phc, Phc::Text(_)), "{other}");
            assert_eq!(phc.to_string(), other);
        }
        // Inline in an account, in place of a pointer to a string of its own.
        assert_eq!(std::mem::size_of::<Option<Phc>>(), 64);
    }

    #[test]
    fn rehash_checks_the_old_password_then_hashes_the_new_one() {
        let h = Hasher::new(4, 8, 1).unwrap();
        let old = Password::parse("old-password").unwrap();
        let new = Password::parse("new-password").unwrap();
        let HashOutcome::Hashed(phc) = h.run(&HashJob::Hash(old.clone())) else {
            panic!()
        };
        let phc = Phc::parse(&phc);
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
        let changed = Phc::parse(&changed);
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
