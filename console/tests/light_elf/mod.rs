//! A minimal ELF of the light for tests that need no chip build.

use herd_console::bench::Chip;

/// A minimal ELF for `chip` the way esp-hal lays one out: an app descriptor at the start
/// of flash-mapped data, code in flash-mapped instruction memory, initialised data in RAM
/// (the ESP32-C3 maps data and code through separate windows, the C6 through one).
pub fn synthetic_elf(chip: Chip, version: &str) -> Vec<u8> {
    synthetic_elf_with_code(chip, version, 3000)
}

/// [`synthetic_elf`] with `code` bytes of instructions.
pub fn synthetic_elf_with_code(chip: Chip, version: &str, code: u32) -> Vec<u8> {
    let (desc_at, text_at, data_at) = match chip {
        Chip::Esp32c3 => (0x3c00_0020, 0x4200_0020, 0x3fc8_0000),
        Chip::Esp32c6 => (0x4280_0020, 0x4200_0020, 0x4080_0000),
    };
    let mut desc = vec![0u8; 256];
    desc[..4].copy_from_slice(&0xabcd_5432u32.to_le_bytes());
    desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
    desc[48..58].copy_from_slice(b"herd-light");
    let text: Vec<u8> = (0..code).map(|n| (n * 7 % 251) as u8).collect();
    let data = vec![0x5au8; 64];
    let sections: [(&str, u32, u32, u32, &[u8]); 3] = [
        // name, type (PROGBITS), flags, address, bytes
        (".flash.appdesc", 1, 0x2, desc_at, &desc),
        (".flash.text", 1, 0x6, text_at, &text),
        (".data", 1, 0x3, data_at, &data),
    ];
    let mut names = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, ..) in &sections {
        name_offsets.push(names.len() as u32);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let shstrtab_name = names.len() as u32;
    names.extend_from_slice(b".shstrtab\0");

    let mut body = Vec::new();
    let mut offsets = Vec::new();
    let base = 52usize;
    for (_, _, _, _, bytes) in &sections {
        while !(base + body.len()).is_multiple_of(4) {
            body.push(0);
        }
        offsets.push((base + body.len()) as u32);
        body.extend_from_slice(bytes);
    }
    let names_offset = (base + body.len()) as u32;
    body.extend_from_slice(&names);
    while !(base + body.len()).is_multiple_of(4) {
        body.push(0);
    }
    let section_headers = (base + body.len()) as u32;

    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let u16le = |v: u16| v.to_le_bytes();
    let u32le = |v: u32| v.to_le_bytes();
    elf.extend_from_slice(&u16le(2)); // executable
    elf.extend_from_slice(&u16le(243)); // RISC-V
    elf.extend_from_slice(&u32le(1));
    elf.extend_from_slice(&u32le(text_at)); // entry
    elf.extend_from_slice(&u32le(0)); // no program headers
    elf.extend_from_slice(&u32le(section_headers));
    elf.extend_from_slice(&u32le(1)); // RVC
    elf.extend_from_slice(&u16le(52));
    elf.extend_from_slice(&u16le(32));
    elf.extend_from_slice(&u16le(0));
    elf.extend_from_slice(&u16le(40));
    elf.extend_from_slice(&u16le(sections.len() as u16 + 2));
    elf.extend_from_slice(&u16le(sections.len() as u16 + 1));
    elf.extend_from_slice(&body);
    let mut header = |name: u32, kind: u32, flags: u32, addr: u32, offset: u32, size: u32| {
        for word in [name, kind, flags, addr, offset, size, 0, 0, 4, 0] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
    };
    header(0, 0, 0, 0, 0, 0);
    for (n, (_, kind, flags, addr, bytes)) in sections.iter().enumerate() {
        header(
            name_offsets[n],
            *kind,
            *flags,
            *addr,
            offsets[n],
            bytes.len() as u32,
        );
    }
    header(shstrtab_name, 3, 0, 0, names_offset, names.len() as u32);
    elf
}
