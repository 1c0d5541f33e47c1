//! redb store
