//! The pure heart of crmbridge.
//!
//! Everything that decides *what* happens to an event lives here, and nothing
//! here does IO: no HTTP, no AWS, no clock reads hidden behind the caller's
//! back. That keeps the rules exhaustively testable and makes every decision
//! reproducible from the recorded inputs of a run.

pub mod event;

pub use event::{Event, EventId, Subject};
