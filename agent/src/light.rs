//! The light of a Linux device: simulated (the state is logged) or a GPIO line driven
//! through the kernel's GPIO character device (`/dev/gpiochipN`, uAPI v2).

use std::fs::File;
use std::path::PathBuf;

/// How the agent shows its light.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LightOptions {
    /// Log every change.
    #[default]
    Simulated,
    /// Drive a GPIO line. Without `line`, the configured `smartlight.pin` is used.
    Gpio {
        /// The chip, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The line offset on that chip.
        line: Option<u32>,
    },
}

/// A light driver.
#[derive(Debug)]
pub enum LightDriver {
    /// See [`LightOptions::Simulated`].
    Simulated {
        /// Last level, to log changes only.
        level: Option<bool>,
    },
    /// See [`LightOptions::Gpio`].
    Gpio {
        /// Chip path.
        chip: PathBuf,
        /// Fixed line, if given.
        line: Option<u32>,
        /// The requested line and its file descriptor.
        handle: Option<(u32, File)>,
    },
}

impl LightDriver {
    /// A driver for `options`; GPIO lines are requested on first use.
    pub fn new(options: &LightOptions) -> LightDriver {
        match options {
            LightOptions::Simulated => LightDriver::Simulated { level: None },
            LightOptions::Gpio { chip, line } => LightDriver::Gpio {
                chip: chip.clone(),
                line: *line,
                handle: None,
            },
        }
    }

    /// Drives the light; errors are logged, because a broken lamp must not stop the device
    /// from talking to the cloud.
    pub fn set_level(&mut self, pin: i64, level: bool) {
        match self {
            LightDriver::Simulated { level: last } => {
                if *last != Some(level) {
                    tracing::info!(pin, level, "light output");
                    *last = Some(level);
                }
            }
            LightDriver::Gpio { chip, line, handle } => {
                let Some(offset) = line.or_else(|| u32::try_from(pin).ok()) else {
                    tracing::warn!(pin, "no valid GPIO line for the light");
                    return;
                };
                if handle.as_ref().map(|(o, _)| *o) != Some(offset) {
                    *handle = None;
                    match gpio::request_output(chip, offset, level) {
                        Ok(fd) => *handle = Some((offset, fd)),
                        Err(e) => {
                            tracing::warn!(chip = %chip.display(), offset, error = %e, "cannot request the GPIO line");
                            return;
                        }
                    }
                }
                if let Some((_, fd)) = handle {
                    if let Err(e) = gpio::set_value(fd, level) {
                        tracing::warn!(offset, error = %e, "cannot set the GPIO line");
                    }
                }
            }
        }
    }
}

#[allow(unsafe_code)]
mod gpio {
    //! The two ioctls of the GPIO character device uAPI v2 that an output needs
    //! (`linux/gpio.h`): request a line as output, set its value.

    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::path::Path;

    const LINES_MAX: usize = 64;
    const NAME_SIZE: usize = 32;
    const NUM_ATTRS_MAX: usize = 10;
    const FLAG_OUTPUT: u64 = 1 << 3;
    const ATTR_ID_OUTPUT_VALUES: u32 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct LineAttribute {
        id: u32,
        padding: u32,
        value: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct ConfigAttribute {
        attr: LineAttribute,
        mask: u64,
    }

    #[repr(C)]
    struct LineConfig {
        flags: u64,
        num_attrs: u32,
        padding: [u32; 5],
        attrs: [ConfigAttribute; NUM_ATTRS_MAX],
    }

    #[repr(C)]
    struct LineRequest {
        offsets: [u32; LINES_MAX],
        consumer: [u8; NAME_SIZE],
        config: LineConfig,
        num_lines: u32,
        event_buffer_size: u32,
        padding: [u32; 5],
        fd: i32,
    }

    #[repr(C)]
    struct LineValues {
        bits: u64,
        mask: u64,
    }

    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (0xB4 << 8) | nr
    }

    const GET_LINE: u64 = iowr(0x07, std::mem::size_of::<LineRequest>());
    const SET_VALUES: u64 = iowr(0x0F, std::mem::size_of::<LineValues>());

    // The kernel ABI fixes these sizes; a mismatch would corrupt the ioctl.
    const _: () = assert!(std::mem::size_of::<LineRequest>() == 592);
    const _: () = assert!(std::mem::size_of::<LineValues>() == 16);

    pub fn request_output(chip: &Path, offset: u32, level: bool) -> io::Result<File> {
        let chip = OpenOptions::new().read(true).write(true).open(chip)?;
        let mut consumer = [0u8; NAME_SIZE];
        consumer[..10].copy_from_slice(b"herd-light");
        let mut attrs = [ConfigAttribute::default(); NUM_ATTRS_MAX];
        attrs[0] = ConfigAttribute {
            attr: LineAttribute {
                id: ATTR_ID_OUTPUT_VALUES,
                padding: 0,
                value: u64::from(level),
            },
            mask: 1,
        };
        let mut offsets = [0u32; LINES_MAX];
        offsets[0] = offset;
        let mut request = LineRequest {
            offsets,
            consumer,
            config: LineConfig {
                flags: FLAG_OUTPUT,
                num_attrs: 1,
                padding: [0; 5],
                attrs,
            },
            num_lines: 1,
            event_buffer_size: 0,
            padding: [0; 5],
            fd: -1,
        };
        // SAFETY: `request` is a properly laid out `gpio_v2_line_request` that lives for
        // the duration of the call; the kernel writes only within it.
        let rc = unsafe { libc::ioctl(chip.as_raw_fd(), GET_LINE as _, &mut request) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if request.fd < 0 {
            return Err(io::Error::other("the kernel returned no line descriptor"));
        }
        // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
        Ok(unsafe { File::from_raw_fd(request.fd) })
    }

    pub fn set_value(line: &File, level: bool) -> io::Result<()> {
        let mut values = LineValues {
            bits: u64::from(level),
            mask: 1,
        };
        // SAFETY: `values` is a `gpio_v2_line_values` valid for the call.
        let rc = unsafe { libc::ioctl(line.as_raw_fd(), SET_VALUES as _, &mut values) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
