//! Writes a seeded, realistic notification log for benchmarks:
//! `herd-loggen [--seed N] [--devices N] [--bytes N[K|M|G]] [--start UNIX] OUT`.

use std::process::ExitCode;

use herd_analytics::generate::{generate, Config};

fn size(text: &str) -> Option<u64> {
    let (digits, scale) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        b'G' | b'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn main() -> ExitCode {
    let mut config = Config::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--seed" => value().parse().map(|v| config.seed = v).is_ok(),
            "--devices" => value().parse().map(|v| config.devices = v).is_ok(),
            "--bytes" => size(&value()).map(|v| config.bytes = v).is_some(),
            "--start" => value().parse().map(|v| config.start = v).is_ok(),
            _ if !arg.starts_with("--") && out.is_none() => {
                out = Some(arg.clone());
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("herd-loggen: bad argument {arg:?}");
            eprintln!(
                "usage: herd-loggen [--seed N] [--devices N] [--bytes N[K|M|G]] [--start UNIX] OUT"
            );
            return ExitCode::from(2);
        }
    }
    let Some(out) = out else {
        eprintln!(
            "usage: herd-loggen [--seed N] [--devices N] [--bytes N[K|M|G]] [--start UNIX] OUT"
        );
        return ExitCode::from(2);
    };
    let result = std::fs::File::create(&out).and_then(|file| generate(&config, file));
    match result {
        Ok(summary) => {
            println!(
                "{out}: {} lines, {} bytes, seed {}, {} devices, {:.1} h of events",
                summary.lines,
                summary.bytes,
                config.seed,
                config.devices,
                (summary.last_us as f64 / 1e6 - config.start) / 3600.0
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herd-loggen: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}
