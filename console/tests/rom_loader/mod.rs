//! A stand-in for the ESP32-C3/C6 ROM serial loader on a pseudo-terminal: it speaks the
//! documented SLIP framed command protocol (sync, security info, registers, SPI attach,
//! flash begin/data/end, MD5) and records every byte written to its flash. A flasher that
//! uploads the RAM stub (memory begin/data/end) is greeted with `OHAI` and then answered
//! as the stub answers: two status bytes, binary MD5, compressed writes (deflate
//! begin/data/end), a baud rate change.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use herd_console::bench::Chip;
use md5::{Digest, Md5};
use portable_pty::{native_pty_system, PtyPair, PtySize};

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

/// A response: direction, command, length, value, data, then the status bytes (all zero:
/// success), four from the ROM and two from the stub.
fn response(stub: bool, op: u8, value: u32, data: &[u8]) -> Vec<u8> {
    let status: &[u8] = if stub { &[0, 0] } else { &[0, 0, 0, 0] };
    let mut out = vec![0x01, op];
    out.extend_from_slice(&((data.len() + status.len()) as u16).to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(status);
    slip(&out)
}

fn word(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes"))
}

/// What the stand-in saw.
#[derive(Default)]
pub struct Rom {
    /// The chip it answers as.
    pub chip: Option<Chip>,
    /// Flash contents by byte address.
    pub flash: BTreeMap<u32, u8>,
    /// Command bytes in the order received.
    pub commands: Vec<u8>,
    begin: Option<(u32, u32)>,
    /// The stub runs: it answers from now on.
    pub stub: bool,
    /// The compressed write under way: where it goes, and its zlib stream so far.
    inflating: Option<(u32, flate2::Decompress, Vec<u8>)>,
    /// Told the address of every region the flasher checked with MD5.
    pub verified: Option<tokio::sync::mpsc::UnboundedSender<u32>>,
}

impl Rom {
    /// `len` bytes of flash from `offset`, erased (`0xff`) where nothing was written.
    pub fn read(&self, offset: u32, len: usize) -> Vec<u8> {
        (offset..offset + len as u32)
            .map(|a| *self.flash.get(&a).unwrap_or(&0xff))
            .collect()
    }

    fn answer(&mut self, frame: &[u8]) -> Vec<u8> {
        let op = frame[1];
        let data = &frame[8..];
        self.commands.push(op);
        let stub = self.stub;
        let response = |op: u8, value: u32, data: &[u8]| response(stub, op, value, data);
        match op {
            // SYNC: the ROM answers it eight times.
            0x08 => (0..8).flat_map(|_| response(op, 0, &[])).collect(),
            // GET_SECURITY_INFO: flags, crypt count, key purposes, chip id (5 for the
            // ESP32-C3, 13 for the C6), eco version.
            0x14 => {
                let id: u32 = match self.chip {
                    Some(Chip::Esp32c6) => 13,
                    _ => 5,
                };
                let mut info = vec![0u8; 12];
                info.extend_from_slice(&id.to_le_bytes());
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
            // SPI_FLASH_MD5: address, size; the ROM answers in hex text, the stub in
            // the sixteen bytes.
            0x13 => {
                let (address, size) = (word(data, 0), word(data, 4));
                let bytes = self.read(address, size as usize);
                if let Some(verified) = &self.verified {
                    let _ = verified.send(address);
                }
                let digest = Md5::digest(&bytes);
                if stub {
                    return response(op, 0, &digest);
                }
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                response(op, 0, hex.as_bytes())
            }
            // MEM_END: the stub was loaded into RAM and now runs; it says hello.
            0x06 => {
                let mut out = response(op, 0, &[]);
                self.stub = true;
                out.extend(slip(b"OHAI"));
                out
            }
            // FLASH_DEFL_BEGIN: uncompressed size, blocks, block size, offset.
            0x10 => {
                let stream = flate2::Decompress::new(true);
                self.inflating = Some((word(data, 12), stream, Vec::new()));
                response(op, 0, &[])
            }
            // FLASH_DEFL_DATA: length, sequence, two zero words, a piece of the zlib
            // stream; what it inflates to is written on from where the last piece ended.
            0x11 => {
                let (offset, stream, written) =
                    self.inflating.as_mut().expect("FLASH_DEFL_BEGIN first");
                let length = word(data, 0) as usize;
                let mut input = &data[16..16 + length];
                while !input.is_empty() {
                    let mut out = vec![0u8; 64 * 1024];
                    let before = (stream.total_in(), stream.total_out());
                    stream
                        .decompress(input, &mut out, flate2::FlushDecompress::None)
                        .expect("a zlib stream");
                    let used = (stream.total_in() - before.0) as usize;
                    let made = (stream.total_out() - before.1) as usize;
                    written.extend_from_slice(&out[..made]);
                    input = &input[used..];
                    if used == 0 && made == 0 {
                        break;
                    }
                }
                let at = *offset;
                let bytes = std::mem::take(written);
                for (n, &byte) in bytes.iter().enumerate() {
                    self.flash.insert(at + n as u32, byte);
                }
                *offset += bytes.len() as u32;
                response(op, 0, &[])
            }
            // READ_REG (efuses, SPI registers: all zero), WRITE_REG, SPI_ATTACH,
            // SPI_SET_PARAMS, MEM_BEGIN, MEM_DATA (the stub's code: run as if loaded),
            // CHANGE_BAUDRATE, FLASH_END, FLASH_DEFL_END and anything else: done.
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

/// A pseudo-terminal with the stand-in answering on its master side; the flasher opens
/// [`Loader::path`].
pub struct Loader {
    /// The terminal's device path.
    pub path: String,
    /// What the stand-in saw.
    pub rom: Arc<Mutex<Rom>>,
    pair: PtyPair,
}

impl Loader {
    /// Starts a stand-in answering as `chip`.
    pub fn start(chip: Chip) -> Loader {
        let pair = native_pty_system()
            .openpty(PtySize::default())
            .expect("a pseudo-terminal");
        let path = pair
            .master
            .tty_name()
            .expect("the terminal's name")
            .display()
            .to_string();
        let rom = Arc::new(Mutex::new(Rom {
            chip: Some(chip),
            ..Rom::default()
        }));
        let reader = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        let serving = rom.clone();
        std::thread::spawn(move || serve(reader, writer, serving));
        Loader { path, rom, pair }
    }

    /// Tells `verified` the address of every region checked with MD5 from now on.
    pub fn watch(&self) -> tokio::sync::mpsc::UnboundedReceiver<u32> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.rom.lock().expect("rom").verified = Some(sender);
        receiver
    }

    /// Closes the terminal's slave side this process holds, so the stand-in stops when
    /// the flasher closes its own.
    pub fn release(self) -> Arc<Mutex<Rom>> {
        drop(self.pair.slave);
        self.rom
    }
}
