//! Parsing server lines (used by the client and the conformance suite).
