//! The real flashing code (`herd_console::bench::Board`, espflash underneath) against a
//! stand-in for the ESP32-C3 ROM serial loader on a pseudo-terminal: it speaks the
//! documented SLIP framed command protocol (sync, security info, registers, SPI attach,
//! flash begin/data/end, MD5) and records every byte written to its flash, which must then
//! hold exactly the image, segment by segment.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use herd_console::bench::{build_image, Board, Chip, Factory, PortOptions, Progress};
use md5::{Digest, Md5};

const SLIP_END: u8 = 0xc0;
const SLIP_ESC: u8 = 0xdb;

fn slip(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![SLIP_END];
    for &byte in payload {
        match byte {
            SLIP_END => out.extend_from_slice(&[SLIP_ESC, 0xdc]),
            SLIP_ESC => out.extend_from_slice(&[SLIP_ESC, 0xdd]),
            other => out.push(other),
        }
    }
    out.push(SLIP_END);
    out
}

/// A response as the ROM sends it: direction, command, length, value, data, then four
/// status bytes (all zero: success).
fn response(op: u8, value: u32, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01, op];
    out.extend_from_slice(&((data.len() + 4) as u16).to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&[0, 0, 0, 0]);
    slip(&out)
}

fn word(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes"))
}

/// What the stand-in saw.
#[derive(Default)]
struct Rom {
    /// Flash contents by byte address.
    flash: BTreeMap<u32, u8>,
    commands: Vec<u8>,
    begin: Option<(u32, u32)>,
}

impl Rom {
    fn answer(&mut self, frame: &[u8]) -> Vec<u8> {
        let op = frame[1];
        let data = &frame[8..];
        self.commands.push(op);
        match op {
            // SYNC: the ROM answers it eight times.
            0x08 => (0..8).flat_map(|_| response(op, 0, &[])).collect(),
            // GET_SECURITY_INFO: flags, crypt count, key purposes, chip id 5 (ESP32-C3), eco.
            0x14 => {
                let mut info = vec![0u8; 12];
                info.extend_from_slice(&5u32.to_le_bytes());
                info.extend_from_slice(&0u32.to_le_bytes());
                response(op, 0, &info)
            }
            // FLASH_BEGIN: erase size, blocks, block size, offset.
            0x02 => {
                self.begin = Some((word(data, 12), word(data, 8)));
                response(op, 0, &[])
            }
            // FLASH_DATA: length, sequence, two zero words, the block.
            0x03 => {
                let (offset, block) = self.begin.expect("FLASH_BEGIN before FLASH_DATA");
                let length = word(data, 0) as usize;
                let sequence = word(data, 4);
                let at = offset + sequence * block;
                for (n, &byte) in data[16..16 + length].iter().enumerate() {
                    self.flash.insert(at + n as u32, byte);
                }
                response(op, 0, &[])
            }
            // SPI_FLASH_MD5: address, size; the ROM answers in hex text.
            0x13 => {
                let (address, size) = (word(data, 0), word(data, 4));
                let bytes: Vec<u8> = (address..address + size)
                    .map(|a| *self.flash.get(&a).unwrap_or(&0xff))
                    .collect();
                let hex: String = Md5::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                response(op, 0, hex.as_bytes())
            }
            // READ_REG (efuses, SPI registers: all zero), WRITE_REG, SPI_ATTACH,
            // SPI_SET_PARAMS, FLASH_END and anything else: done.
            _ => response(op, 0, &[]),
        }
    }
}

/// Reads SLIP frames from the master side of the pty and answers them.
fn serve(
    mut reader: Box<dyn Read + Send>,
    mut writer: Box<dyn Write + Send>,
    rom: Arc<Mutex<Rom>>,
) {
    let mut frame = Vec::new();
    let mut in_frame = false;
    let mut escaped = false;
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(n) = reader.read(&mut buffer) else {
            return;
        };
        if n == 0 {
            return;
        }
        for &byte in &buffer[..n] {
            match (byte, escaped) {
                (SLIP_END, _) => {
                    if in_frame && frame.len() >= 8 {
                        let reply = rom.lock().expect("rom").answer(&frame);
                        if writer
                            .write_all(&reply)
                            .and_then(|()| writer.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                    in_frame = true;
                    frame.clear();
                }
                (SLIP_ESC, false) => escaped = true,
                (0xdc, true) => {
                    frame.push(SLIP_END);
                    escaped = false;
                }
                (0xdd, true) => {
                    frame.push(SLIP_ESC);
                    escaped = false;
                }
                (other, _) => {
                    escaped = false;
                    if in_frame {
                        frame.push(other);
                    }
                }
            }
        }
    }
}

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

mod light_elf;

#[test]
fn the_image_is_written_through_the_rom_loader_protocol() {
    use portable_pty::{native_pty_system, PtySize};
    let pair = native_pty_system()
        .openpty(PtySize::default())
        .expect("a pseudo-terminal");
    let path = pair.master.tty_name().expect("the terminal's name");
    let rom = Arc::new(Mutex::new(Rom::default()));
    let reader = pair.master.try_clone_reader().expect("reader");
    let writer = pair.master.take_writer().expect("writer");
    let serving = rom.clone();
    std::thread::spawn(move || serve(reader, writer, serving));

    let options = PortOptions {
        port: path.display().to_string(),
        baud: 115_200,
        reset_into_loader: false,
        stub: false,
    };
    let mut board = Board::connect(&options, Some(Chip::Esp32c3)).expect("the stand-in answers");
    assert_eq!(board.chip(), Chip::Esp32c3);
    let factory = Factory {
        device_id: "0123456789abcdef01234567".into(),
        token: "89abcdef0123456789abcdef".into(),
        server: "ws://10.0.0.2:8009/api/v2/rpc".into(),
        name: "bench".into(),
        ..Factory::default()
    };
    let image = build_image(
        Chip::Esp32c3,
        &light_elf::synthetic_elf(Chip::Esp32c3, "3.1.0"),
        &factory,
    )
    .expect("an image");
    let mut seen = Seen::default();
    board
        .write(&image, &mut seen)
        .expect("written and verified");
    board.reset().expect("reset");
    drop(pair.slave);

    let rom = rom.lock().expect("rom");
    for segment in &image.segments {
        let written: Vec<u8> = (segment.offset..segment.offset + segment.data.len() as u32)
            .map(|a| {
                *rom.flash
                    .get(&a)
                    .unwrap_or_else(|| panic!("{} not written at {a:#x}", segment.name))
            })
            .collect();
        assert_eq!(written, segment.data, "{}", segment.name);
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
