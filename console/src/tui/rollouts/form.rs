//! The new-rollout form: which devices, which image, waves and thresholds, and the spec
//! it makes.

use herd_client::{FirmwareObject, RolloutObject, RolloutSpec};
use protocol::firmware::{CommitPolicy, Delivery, Selector, WaveSpec};
use serde_json::json;

use super::super::input::LineInput;
use crate::text;

/// The form's fields, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormField {
    Firmware,
    Name,
    Waves,
    Soak,
    Parallel,
    Halt,
    Commit,
    Delivery,
}

impl FormField {
    pub const ALL: [FormField; 8] = [
        FormField::Firmware,
        FormField::Name,
        FormField::Waves,
        FormField::Soak,
        FormField::Parallel,
        FormField::Halt,
        FormField::Commit,
        FormField::Delivery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FormField::Firmware => "firmware",
            FormField::Name => "name",
            FormField::Waves => "waves",
            FormField::Soak => "soak",
            FormField::Parallel => "parallel",
            FormField::Halt => "halt at",
            FormField::Commit => "commit",
            FormField::Delivery => "delivery",
        }
    }

    /// What the field means, shown beside it.
    pub fn hint(self) -> &'static str {
        match self {
            FormField::Firmware => "↑↓ chooses",
            FormField::Name => "empty: app and version",
            FormField::Waves => "% per wave; the last takes the rest",
            FormField::Soak => "healthy this long to count (90s, 5m)",
            FormField::Parallel => "devices updating at once",
            FormField::Halt => "% failed in a wave halts; empty: never",
            FormField::Commit => "←→ when back, or after the soak",
            FormField::Delivery => "←→ the server sends, the device fetches",
        }
    }

    pub(super) fn step(self, delta: isize) -> FormField {
        let all = FormField::ALL;
        let i = all.iter().position(|f| *f == self).unwrap_or(0) as isize;
        all[(i + delta).rem_euclid(all.len() as isize) as usize]
    }
}

/// Where the form is.
#[derive(Debug)]
pub enum FormStage {
    Editing,
    /// The dry run of this spec is in flight.
    Planning(Box<RolloutSpec>),
    /// The server's plan for `spec`; Enter creates exactly that.
    Plan {
        plan: Box<RolloutObject>,
        spec: Box<RolloutSpec>,
    },
    /// Creation of this plan is in flight.
    Creating {
        plan: Box<RolloutObject>,
    },
}

/// Planning a rollout: which devices, which firmware, waves and thresholds.
#[derive(Debug)]
pub struct NewRollout {
    pub select: Selector,
    /// The selection for people: "3 marked devices", "the filter fw:1.0 (42 shown)".
    pub describe: String,
    /// `None` while `GET /firmware` is in flight.
    pub firmware: Option<Result<Vec<FirmwareObject>, String>>,
    pub firmware_cursor: usize,
    pub focus: FormField,
    pub name: LineInput,
    pub waves: LineInput,
    pub soak: LineInput,
    pub parallel: LineInput,
    pub halt: LineInput,
    pub commit: CommitPolicy,
    pub delivery: Delivery,
    /// Why the form cannot go on: a field, or the server's answer.
    pub error: Option<String>,
    pub stage: FormStage,
}

impl NewRollout {
    pub fn new(select: Selector, describe: String) -> Self {
        NewRollout {
            select,
            describe,
            firmware: None,
            firmware_cursor: 0,
            focus: FormField::Firmware,
            name: LineInput::default(),
            waves: LineInput::new("10,30,60"),
            soak: LineInput::new("60"),
            parallel: LineInput::new("50"),
            halt: LineInput::new("20"),
            commit: CommitPolicy::Device,
            delivery: Delivery::Push,
            error: None,
            stage: FormStage::Editing,
        }
    }

    pub fn input(&self, field: FormField) -> Option<&LineInput> {
        match field {
            FormField::Name => Some(&self.name),
            FormField::Waves => Some(&self.waves),
            FormField::Soak => Some(&self.soak),
            FormField::Parallel => Some(&self.parallel),
            FormField::Halt => Some(&self.halt),
            _ => None,
        }
    }

    pub(super) fn input_mut(&mut self, field: FormField) -> Option<&mut LineInput> {
        match field {
            FormField::Name => Some(&mut self.name),
            FormField::Waves => Some(&mut self.waves),
            FormField::Soak => Some(&mut self.soak),
            FormField::Parallel => Some(&mut self.parallel),
            FormField::Halt => Some(&mut self.halt),
            _ => None,
        }
    }

    pub fn chosen_firmware(&self) -> Option<&FirmwareObject> {
        match &self.firmware {
            Some(Ok(list)) => list.get(self.firmware_cursor),
            _ => None,
        }
    }

    /// The spec the form describes, or what is wrong with it.
    pub fn spec(&self) -> Result<RolloutSpec, String> {
        let firmware = match &self.firmware {
            None => return Err("the firmware list is still loading".into()),
            Some(Err(e)) => return Err(format!("cannot list firmware: {e}")),
            Some(Ok(list)) if list.is_empty() => {
                return Err(
                    "no firmware in the store: upload an image first (herd firmware upload)".into(),
                )
            }
            Some(Ok(_)) => self
                .chosen_firmware()
                .ok_or("choose a firmware (↑↓)")?
                .id
                .clone(),
        };
        let soak = parse_seconds(self.soak.text())
            .ok_or("soak: a number of seconds, e.g. 60, 90s or 5m")?;
        let waves = parse_waves(self.waves.text(), soak)?;
        let max_parallel = self
            .parallel
            .text()
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or("parallel: devices updating at once, 1 to 10000")?;
        let halt = self.halt.text().trim().trim_end_matches('%');
        let failed_percent = if halt.is_empty() {
            None
        } else {
            Some(
                halt.parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
                    .ok_or("halt at: a percent from 0 to 100, or empty for never")?,
            )
        };
        // The server's defaults for what the form does not ask (offline policy, commit
        // timeout) come with the spec's own deserialisation.
        let mut spec: RolloutSpec = serde_json::from_value(json!({"firmware": firmware}))
            .map_err(|e| format!("cannot build the spec: {e}"))?;
        let name = self.name.text().trim();
        spec.name = (!name.is_empty()).then(|| name.to_string());
        spec.select = self.select.clone();
        spec.waves = waves;
        spec.max_parallel = max_parallel;
        spec.halt_when.failed_percent = failed_percent;
        spec.commit = self.commit;
        spec.delivery = self.delivery;
        Ok(spec)
    }
}

/// Parses waves as percents (`10,30,60`, `%` allowed), each soaking `soak_s`. Empty text
/// is one wave of every device.
pub fn parse_waves(text: &str, soak_s: u64) -> Result<Vec<WaveSpec>, String> {
    let mut waves = Vec::new();
    let mut sum = 0.0;
    for word in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let percent = word
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| {
                format!("waves: {word:?} is not a percent from 1 to 100; write e.g. 10,30,60")
            })?;
        sum += percent;
        waves.push(WaveSpec {
            percent: Some(percent),
            count: None,
            soak_s,
        });
    }
    if sum > 100.0 + 1e-9 {
        return Err(format!(
            "waves: the percents add up to {sum}, more than 100"
        ));
    }
    Ok(waves)
}

/// Seconds from `60`, `90s`, `5m` or `1h`.
pub fn parse_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, 's') => (&text[..i], 1),
        (i, 'm') => (&text[..i], 60),
        (i, 'h') => (&text[..i], 3600),
        _ => (text, 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// Newest first: the image just uploaded is the one wanted most often.
pub(super) fn sort_firmware(list: &mut [FirmwareObject]) {
    // Times compare as instants: RFC 3339 text with and without fractions of a second
    // does not sort as text.
    let time = |f: &FirmwareObject| text::parse_rfc3339(&f.created_at).unwrap_or(0.0);
    list.sort_by(|a, b| {
        time(b)
            .total_cmp(&time(a))
            .then_with(|| b.version.cmp(&a.version))
    });
}

/// `48.0 KiB`.
pub fn bytes(size: u64) -> String {
    match size {
        0..=1023 => format!("{size} B"),
        1024..=1_048_575 => format!("{:.1} KiB", size as f64 / 1024.0),
        _ => format!("{:.1} MiB", size as f64 / 1_048_576.0),
    }
}

/// A firmware's version for people, or a short id when it has none.
pub fn version_text(firmware: &FirmwareObject) -> String {
    if firmware.version.is_empty() {
        firmware.id.chars().take(12).collect()
    } else {
        firmware.version.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::rollouts::count;

    #[test]
    fn newest_firmware_first_whatever_the_time_text() {
        let image = |version: &str, created_at: &str| -> FirmwareObject {
            serde_json::from_value(json!({"id": version, "sha256": version, "size": 1,
                "version": version, "created_at": created_at}))
            .expect("firmware")
        };
        let mut list = vec![
            image("1.1.0", "2025-01-01T00:00:01.250Z"),
            image("1.2.0", "2025-01-01T00:00:01.5Z"),
            image("1.0.0", "2025-01-01T00:00:01Z"),
        ];
        sort_firmware(&mut list);
        let versions: Vec<&str> = list.iter().map(|f| f.version.as_str()).collect();
        assert_eq!(versions, ["1.2.0", "1.1.0", "1.0.0"]);
    }

    #[test]
    fn waves_and_seconds() {
        assert_eq!(parse_waves("", 5).expect("empty"), Vec::new());
        let waves = parse_waves("10 30,60", 5).expect("valid");
        assert_eq!(
            waves.iter().map(|w| w.percent).collect::<Vec<_>>(),
            [Some(10.0), Some(30.0), Some(60.0)]
        );
        assert!(parse_waves("60,60", 0)
            .expect_err("too much")
            .contains("more than 100"));
        assert!(parse_waves("0", 0).is_err());
        assert_eq!(parse_seconds("90"), Some(90));
        assert_eq!(parse_seconds(" 90s "), Some(90));
        assert_eq!(parse_seconds("2h"), Some(7200));
        assert_eq!(parse_seconds("soon"), None);
        assert_eq!(parse_seconds(""), None);
        assert_eq!(count(1, "wave"), "1 wave");
        assert_eq!(count(0, "wave"), "0 waves");
        assert_eq!(bytes(49_152), "48.0 KiB");
    }
}
