//! The real flashing code (`herd_console::bench::Board`, espflash underneath) against a
//! stand-in for the ESP32-C3/C6 ROM serial loader on a pseudo-terminal (`rom_loader`): it
//! records every byte written to its flash, which must then hold exactly the image,
//! segment by segment.

mod light_elf;
mod rom_loader;

use herd_console::bench::{build_image, Board, Chip, Factory, PortOptions, Progress};
use rom_loader::Loader;

#[derive(Default)]
struct Seen {
    steps: Vec<(String, usize, usize)>,
    verified: Vec<String>,
}

impl Progress for Seen {
    fn advance(&mut self, segment: &str, done: usize, total: usize) {
        self.steps.push((segment.to_string(), done, total));
    }
    fn verifying(&mut self, segment: &str) {
        self.verified.push(segment.to_string());
    }
}

#[test]
fn the_image_is_written_through_the_rom_loader_protocol() {
    // Through the ROM loader itself, and through the stub it is given (compressed, at a
    // higher baud rate), as on a board.
    for (chip, stub) in Chip::ALL.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let loader = Loader::start(chip);
        let options = PortOptions {
            port: loader.path.clone(),
            baud: if stub { 460_800 } else { 115_200 },
            reset_into_loader: false,
            stub,
        };
        let mut board = Board::connect(&options, Some(chip)).expect("the stand-in answers");
        assert_eq!(board.chip(), chip);
        let factory = Factory {
            device_id: "0123456789abcdef01234567".into(),
            token: "89abcdef0123456789abcdef".into(),
            server: "ws://10.0.0.2:8009/api/v2/rpc".into(),
            name: "bench".into(),
            ..Factory::default()
        };
        let elf = light_elf::synthetic_elf(chip, "3.1.0");
        let image = build_image(chip, &elf, &factory).expect("an image");
        let mut seen = Seen::default();
        board
            .write(&image, &mut seen)
            .expect("written and verified");
        board.reset().expect("reset");
        let rom = loader.release();

        let rom = rom.lock().expect("rom");
        assert_eq!(rom.stub, stub);
        // Compressed writes through the stub, plain ones through the ROM.
        assert_eq!(rom.commands.contains(&0x11), stub);
        assert_eq!(rom.commands.contains(&0x03), !stub);
        for segment in &image.segments {
            for (n, byte) in segment.data.iter().enumerate() {
                let at = segment.offset + n as u32;
                let written = rom.flash.get(&at);
                assert!(
                    written.is_some(),
                    "{chip}: {} not written at {at:#x}",
                    segment.name
                );
                assert_eq!(written, Some(byte), "{chip}: {} at {at:#x}", segment.name);
            }
        }
        // Every segment was checked with the loader's MD5 after writing.
        assert_eq!(seen.verified.len(), image.segments.len());
        assert!(rom.commands.contains(&0x13));
        // Progress counts bytes of the whole image and ends at the whole.
        let total = image.size();
        assert!(seen
            .steps
            .iter()
            .all(|(_, done, of)| *of == total && *done <= total));
        assert_eq!(seen.steps.last().map(|s| s.1), Some(total));
        assert!(seen.steps.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}

#[test]
fn a_board_of_another_chip_is_refused() {
    let loader = Loader::start(Chip::Esp32c6);
    let options = PortOptions {
        port: loader.path.clone(),
        baud: 115_200,
        reset_into_loader: false,
        stub: false,
    };
    let error = Board::connect(&options, Some(Chip::Esp32c3)).expect_err("an ESP32-C6");
    assert!(error.message.contains("esp32c6"), "{}", error.message);
}

/// Output shared with the test while the monitor writes it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("output").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_monitor_copies_the_log_and_names_code_addresses() {
    use herd_console::bench::{monitor, Symbols};
    use portable_pty::{native_pty_system, PtySize};
    use std::io::Write as _;
    let pair = native_pty_system()
        .openpty(PtySize::default())
        .expect("a pseudo-terminal");
    let path = pair.master.tty_name().expect("the terminal's name");
    let mut board = pair.master.take_writer().expect("writer");
    let symbols = Symbols::new([(
        0x4200_0100,
        0x40,
        "_ZN10herd_light4main17h0123456789abcdefE".to_string(),
    )]);
    let output = Shared::default();
    let (opened, is_open) = std::sync::mpsc::channel();
    let reading = output.clone();
    let monitor = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut out = reading.clone();
        monitor(
            &path.display().to_string(),
            115_200,
            false,
            Some(&symbols),
            &mut out,
            &mut || {
                let _ = opened.send(());
                let text = String::from_utf8_lossy(&reading.0.lock().expect("output")).into_owned();
                !text.contains("partial") && std::time::Instant::now() < deadline
            },
        )
    });
    // The port is open (and raw) once the monitor first asks whether to go on.
    is_open.recv().expect("the monitor opens the port");
    board
        .write_all(b"herd-light 1.0.0\npanicked at src/main.rs:10\n0x42000104\npartial")
        .expect("the board prints");
    board.flush().expect("flush");
    monitor
        .join()
        .expect("no panic")
        .expect("the monitor reads");
    let text = String::from_utf8(output.0.lock().expect("output").clone()).expect("UTF-8");
    assert_eq!(
        text,
        "herd-light 1.0.0\npanicked at src/main.rs:10\n0x42000104\n    0x42000104 - herd_light::main+0x4\npartial"
    );
    drop(pair.slave);
}
