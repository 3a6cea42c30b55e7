//! How a command ends: the exit codes scripts rely on ([`Exit`]) and the failure that
//! carries one with its message. Its own module so the CLI, the console and the demo share
//! it without importing each other.

use std::process::ExitCode;

use herd_client::Error as ClientError;

/// The exit codes `herd --help` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Unreachable = 3,
    Unauthorized = 4,
    NotFound = 5,
    Conflict = 6,
    Device = 7,
    ReadOnly = 8,
    Image = 9,
    Board = 10,
    FlashWrite = 11,
    NotOnline = 12,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// A failed command: what to print and which code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn read_only(what: &str) -> Self {
        Self::new(
            Exit::ReadOnly,
            format!("refusing to {what}: this profile is read-only"),
        )
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        let exit = match &error {
            e if e.is_connection() => Exit::Unreachable,
            ClientError::Api {
                device: Some(_), ..
            } => Exit::Device,
            e if e.is_unauthorized() => Exit::Unauthorized,
            ClientError::Api { status: 404, .. } => Exit::NotFound,
            ClientError::Api { status: 409, .. } => Exit::Conflict,
            ClientError::Api {
                status: 503 | 504, ..
            } => Exit::Device,
            ClientError::InvalidUrl { .. } => Exit::Usage,
            _ => Exit::Failure,
        };
        Failure::new(exit, error.to_string())
    }
}

impl From<crate::profile::ProfileError> for Failure {
    fn from(error: crate::profile::ProfileError) -> Self {
        Failure::usage(error.to_string())
    }
}

pub type CommandResult = Result<(), Failure>;
