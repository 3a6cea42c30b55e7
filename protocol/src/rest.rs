//! PROTOCOL — in progress.
