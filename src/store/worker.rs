//! placeholder until the store lands
use super::StoreOp;
pub type Ticket = u64;
#[derive(Debug)]
pub struct StoreJob {
    pub ticket: Ticket,
    pub op: StoreOp,
}
