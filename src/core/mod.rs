//! Core state machine.
