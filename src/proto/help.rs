//! HELP text as data.
pub struct HelpEntry {
    pub command: &'static str,
    pub syntax: &'static str,
    pub summary: &'static str,
    pub details: &'static [&'static str],
    pub needs_login: bool,
}
pub const HELP: &[HelpEntry] = &[HelpEntry {
    command: "PING",
    syntax: "PING [<token>]",
    summary: "check the connection",
    details: &["PING x answers PONG x then OK PING."],
    needs_login: false,
}];
pub fn lookup(topic: &str) -> Option<&'static HelpEntry> {
    HELP.iter().find(|e| e.command.eq_ignore_ascii_case(topic))
}
