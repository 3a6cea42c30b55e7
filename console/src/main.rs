//! `herd`: see the `herd_console` library for everything; this only hands over.

fn main() -> std::process::ExitCode {
    herd_console::cli::main()
}
