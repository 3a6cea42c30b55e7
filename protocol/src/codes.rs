//! Error codes carried in RPC `error.code` and in REST error bodies (PROTOCOL §2, §6).
//!
//! Codes coming from devices are passed through unchanged, so these constants are
//! what Herd itself produces and what callers match on; they are not an exhaustive
//! list of what a device may send.

/// Bad arguments (PROTOCOL §2).
pub const BAD_REQUEST: i64 = 400;
/// Denied (PROTOCOL §2).
pub const FORBIDDEN: i64 = 403;
/// No handler for the method (PROTOCOL §2, §3).
pub const NOT_FOUND: i64 = 404;
/// Shadow version conflict (PROTOCOL §4.1).
pub const CONFLICT: i64 = 409;
/// Shadow over its size or depth limit (PROTOCOL §4.1).
pub const TOO_LARGE: i64 = 413;
/// Internal error (PROTOCOL §2).
pub const INTERNAL: i64 = 500;
/// JSON-RPC "method not found", as some device firmware reports it (PROTOCOL §2).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Generic failure, as Mongoose OS reports it (PROTOCOL §2).
pub const GENERIC: i64 = -1;
