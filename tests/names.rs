//! Names that look alike, in a database made before they were refused (spec 4.1): both accounts
//! keep working, and no third name like them can be registered.

use chatd::auth::{HashJob, HashOutcome, Hasher};
use chatd::proto::name::Password;
use chatd::sim::Sim;
use chatd::store::memory::MemoryStore;
use chatd::store::{AccountRecord, Store, StoreOp};

#[test]
fn look_alikes_already_registered_both_keep_working() {
    let hasher = Hasher::new(4, 8, 1).unwrap();
    let HashOutcome::Hashed(phc) =
        hasher.run(&HashJob::Hash(Password::parse("wonderland1").unwrap()))
    else {
        panic!("hashing failed")
    };
    let (mut store, _) = MemoryStore::new();
    for name in ["alice", "aIice"] {
        store
            .write(&[StoreOp::CreateAccount(AccountRecord {
                name: name.into(),
                phc: phc.clone(),
                created_ms: 0,
            })])
            .unwrap();
    }
    let snapshot = store.snapshot();
    let mut s = Sim::with_store(Box::new(store), snapshot);
    for (client, name) in [("a", "alice"), ("b", "aIice")] {
        s.connect(client);
        s.output(client);
        s.send(client, &format!("LOGIN {name} wonderland1"));
        assert!(
            s.output(client).starts_with(&format!("OK LOGIN {name}\n")),
            "{name} can log in"
        );
    }
    s.send("a", "MSG aIice which of us is which?");
    assert_eq!(s.output("a"), "OK MSG 1 DELIVERED\n");
    assert!(s
        .output("b")
        .contains(" alice aIice which of us is which?\n"));
    s.connect("c");
    s.send("c", "REGISTER a1ice wonderland1");
    assert!(s
        .output("c")
        .contains("FAIL REGISTER NAME_TAKEN the name a1ice looks too much like "));
}
