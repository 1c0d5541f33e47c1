//! Containing redb's panics.
//!
//! redb 4 returns `Corrupted` for most damage it finds, but some damaged pages reach an
//! `unreachable!()` in its B-tree code and panic instead (seen with garbage written into pages of a
//! real database file: `table_tree_base.rs`, `btree.rs`). A panic at start-up ends the process
//! with status 101 and a backtrace instead of an error naming the file; a panic in the store
//! threads would take down the store. So every call into redb that reads stored pages runs inside
//! [`contain`], and a panic there is reported as damage of the file, like `Corrupted`. The handle
//! whose call panicked is not trusted afterwards: at start-up it is dropped, and a read that
//! panicked is answered as damaged (its read transaction is dropped with it).
//!
//! The panic hook would still print the panic and its backtrace to stderr before the panic is
//! caught; while a thread is inside `contain` the hook stays quiet for that thread, so the error is
//! told once, as the caller words it.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many `contain` calls this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

static QUIET_HOOK: Once = Once::new();

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    DEPTH.with(|d| d.set(d.get() + 1));
    // The closure's captures are not used again after a panic (see the module documentation).
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| message(&*payload))
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::contain;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(contain(|| 7), Ok(7));
        let err = contain(|| -> u8 { panic!("page {} is garbage", 12) }).unwrap_err();
        assert_eq!(err, "page 12 is garbage");
        let nested = contain(|| contain(|| -> u8 { unreachable!() }).is_err());
        assert_eq!(nested, Ok(true));
    }
}
