//! herd-console: the operator console and the scripting CLI of Herd, binary `herd`.
//!
//! `herd` without a subcommand opens the console, a terminal UI in the spirit of k9s: a
//! live fleet table fed by the notify stream (PROTOCOL §5), a device view with the shadow
//! (§4) side by side and a JSON editor for `desired`, RPC calls from the device's
//! `RPC.List`, firmware rollouts planned from the fleet and watched live, one-device
//! firmware pushes (§10), and a notification tail. With a subcommand it is a scripting
//! tool with stable output and exit codes ([`cli::EXIT_CODES`]), firmware updates and
//! rollouts (PROTOCOL §10) among its commands. `herd demo` runs the whole product on
//! loopback.
//!
//! The console follows The Elm Architecture: [`tui::Model`] is the state,
//! [`tui::update`] the only transition, [`tui::view::render`] draws from the model. Tests
//! and benchmarks drive it without a terminal:
//!
//! ```
//! use herd_console::tui::{update, Model, ModelOptions, Msg, ProfileInfo};
//!
//! let mut model = Model::new(ModelOptions {
//!     profile: ProfileInfo { name: "lab".into(), server: "http://127.0.0.1:8009".into(), read_only: false },
//!     tail_lines: 1000,
//!     now: 0.0,
//!     size: (80, 24),
//! });
//! let commands = update(&mut model, Msg::DevicesLoaded(Ok(Vec::new())));
//! assert!(commands.is_empty());
//! assert!(model.loaded_once);
//! ```

pub mod access;
pub mod bench;
pub mod cli;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exit;
pub mod fleet;
pub mod history;
pub mod lines;
pub mod logsource;
pub mod profile;
pub mod session;
pub mod text;
pub mod tui;

/// RPC methods that only read, which a read-only profile may still call.
pub fn read_only_safe(method: &str) -> bool {
    [".List", ".Get", ".GetInfo", ".Status"]
        .iter()
        .any(|suffix| method.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_only_calls() {
        assert!(super::read_only_safe("RPC.List"));
        assert!(super::read_only_safe("Sys.GetInfo"));
        assert!(super::read_only_safe("Config.Get"));
        assert!(!super::read_only_safe("Sys.Reboot"));
        assert!(!super::read_only_safe("Config.Set"));
    }
}
