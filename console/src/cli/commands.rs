//! The one-shot commands: devices, device, shadow get/set, call, register; and the output
//! helpers every command shares.

use std::io::{Read, Write};

use herd_client::{Client, DeviceObject, NewDevice};
use serde_json::{json, Value};

use super::{CommandResult, Exit, Failure};
use crate::fleet::DeviceRow;

/// Writes to stdout; a closed pipe (`herd devices | head`) is not an error.
pub(crate) fn print(text: &str) -> CommandResult {
    write_out(text).map(|_| ())
}

/// Writes to stdout; `Ok(false)` once the reader has gone away (a closed pipe), so a
/// stream can stop instead of writing into nothing.
pub(crate) fn write_out(text: &str) -> Result<bool, Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::new(
            Exit::Failure,
            format!("cannot write output: {e}"),
        )),
    }
}

pub(crate) fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// Parses JSON given on the command line, or read from stdin for `-`.
pub(crate) fn json_argument(text: &str, what: &str) -> Result<Value, Failure> {
    let text = if text == "-" {
        let mut buffer = String::new();
        std::io::stdin()
            .read_to_string(&mut buffer)
            .map_err(|e| Failure::usage(format!("cannot read {what} from stdin: {e}")))?;
        buffer
    } else {
        text.to_string()
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{what} is not valid JSON: {e}")))
}

/// The device `text` names: its id, its name, or a unique start of either (see
/// [`herd_analytics::names`]). An id is tried first with one `GET /devices/:id`, so naming
/// a device by id costs no listing; a name lists the devices once.
pub async fn resolve_device(client: &Client, text: &str) -> Result<DeviceObject, Failure> {
    if text.trim().is_empty() {
        return Err(Failure::usage("a device id or name is needed"));
    }
    match client.device(text).await {
        Ok(device) => return Ok(device),
        Err(herd_client::Error::Api { status: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    pick_device(client.devices().await?, text)
}

/// The device of `devices` that `text` names (see [`resolve_device`]).
pub fn pick_device(mut devices: Vec<DeviceObject>, text: &str) -> Result<DeviceObject, Failure> {
    use herd_analytics::names::{describe_candidates, resolve, Resolution};
    let found = resolve(
        text,
        devices.iter().map(|d| (d.id.as_str(), d.name.as_str())),
    );
    match found {
        Resolution::Found(id) => {
            let index = devices
                .iter()
                .position(|d| d.id == id)
                .ok_or_else(|| Failure::new(Exit::Failure, "a resolved device went missing"))?;
            Ok(devices.swap_remove(index))
        }
        Resolution::NotFound => Err(Failure::new(
            Exit::NotFound,
            format!("no device has the id or name {text:?}"),
        )),
        Resolution::Ambiguous(candidates) => Err(Failure::usage(format!(
            "{text:?} names more than one device: {}; give more of the name or the id",
            describe_candidates(&candidates)
        ))),
    }
}

/// How a device is named in messages: `name (id)`, or the id alone.
pub fn device_label(device: &DeviceObject) -> String {
    if device.name.is_empty() || device.name == device.id {
        device.id.clone()
    } else {
        format!("{} ({})", device.name, device.id)
    }
}

pub async fn devices(client: &Client, json: bool) -> CommandResult {
    let mut devices = client.devices().await?;
    devices.sort_by(|a, b| a.id.cmp(&b.id));
    if json {
        let text = serde_json::to_string(&devices)
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        return print(&format!("{text}\n"));
    }
    print(&device_table(&devices, now()))
}

pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The human table of `herd devices`: aligned columns, one device per line.
pub fn device_table(devices: &[DeviceObject], now: f64) -> String {
    let header = ["ID", "NAME", "STATE", "APP", "FIRMWARE", "LAST SEEN"];
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|device| {
            let row = DeviceRow::from_object(device, now);
            [
                row.id.to_string(),
                row.name.to_string(),
                if row.online { "online" } else { "offline" }.into(),
                row.app.to_string(),
                row.fw_version.to_string(),
                row.last_seen_text(now),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// Aligned columns separated by two spaces, a header line first; the last column is not
/// padded, so lines carry no trailing blanks.
pub fn table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.as_ref().iter().map(String::as_str));
    }
    out
}

pub async fn device(client: &Client, id: &str, json: bool) -> CommandResult {
    let device = resolve_device(client, id).await?;
    if json {
        let text = serde_json::to_string(&device)
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        return print(&format!("{text}\n"));
    }
    let now = now();
    let row = DeviceRow::from_object(&device, now);
    let mut out = String::new();
    for (key, value) in [
        ("id", device.id.clone()),
        ("name", device.name.clone()),
        (
            "state",
            if device.online { "online" } else { "offline" }.into(),
        ),
        ("owner", device.user_id.clone()),
        ("shared with", device.shared_with.clone()),
        ("created", device.created_at.clone()),
        ("last seen", row.last_seen_text(now)),
        ("app", row.app.to_string()),
        ("arch", row.arch.to_string()),
        ("firmware", row.fw_version.to_string()),
    ] {
        out.push_str(&format!("{key:<12} {value}\n"));
    }
    out.push_str("info:\n");
    out.push_str(&pretty(&device.info));
    out.push_str("shadow:\n");
    out.push_str(&pretty(&device.shadow));
    print(&out)
}

pub async fn shadow_get(client: &Client, id: &str) -> CommandResult {
    let device = resolve_device(client, id).await?;
    let shadow = client.shadow(&device.id).await?;
    print(&pretty(&shadow))
}

/// Turns the `shadow set` argument into a PROTOCOL §4.1 update.
pub fn shadow_update(input: Value, version: Option<u64>) -> Result<Value, Failure> {
    let Value::Object(object) = input else {
        return Err(Failure::usage(
            "the shadow update must be a JSON object, e.g. '{\"on\": true}'",
        ));
    };
    let mut update = if object.contains_key("state") {
        Value::Object(object)
    } else {
        json!({"state": {"desired": object}})
    };
    if let Some(version) = version {
        update["version"] = json!(version);
    }
    Ok(update)
}

pub async fn shadow_set(
    client: &Client,
    id: &str,
    text: &str,
    version: Option<u64>,
) -> CommandResult {
    let update = shadow_update(json_argument(text, "the shadow update")?, version)?;
    let device = resolve_device(client, id).await?;
    let shadow = client.update_shadow(&device.id, &update).await?;
    print(&pretty(&shadow))
}

pub async fn call(client: &Client, id: &str, method: &str, params: Option<&str>) -> CommandResult {
    let params = params
        .map(|text| json_argument(text, "the params"))
        .transpose()?;
    let device = resolve_device(client, id).await?;
    let result = client.call(&device.id, method, params.as_ref()).await?;
    print(&pretty(&result))
}

/// `herd delete`: every device is resolved first, so a typo deletes nothing.
pub async fn delete(client: &Client, queries: &[String], json: bool) -> CommandResult {
    let mut devices = Vec::with_capacity(queries.len());
    for query in queries {
        let device = resolve_device(client, query).await?;
        if !devices.iter().any(|d: &DeviceObject| d.id == device.id) {
            devices.push(device);
        }
    }
    for device in devices {
        client.delete_device(&device.id).await?;
        let line = if json {
            json!({"id": device.id, "name": device.name, "deleted": true}).to_string()
        } else {
            format!("deleted {}", device_label(&device))
        };
        print(&format!("{line}\n"))?;
    }
    Ok(())
}

/// `herd rename`.
pub async fn rename(client: &Client, query: &str, name: &str, json: bool) -> CommandResult {
    if name.trim().is_empty() {
        return Err(Failure::usage("the new name is empty"));
    }
    let device = resolve_device(client, query).await?;
    let change = herd_client::DeviceChange {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let renamed = client.change_device(&device.id, &change).await?;
    if json {
        let text = serde_json::to_string(&renamed)
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        return print(&format!("{text}\n"));
    }
    print(&format!(
        "renamed {} to {}\n",
        device_label(&device),
        renamed.name
    ))
}

pub async fn register(
    client: &Client,
    name: &str,
    id: Option<String>,
    json: bool,
) -> CommandResult {
    let device = client
        .create_device(&NewDevice {
            name: Some(name.to_string()),
            id,
        })
        .await?;
    let token = device
        .token
        .ok_or_else(|| Failure::new(Exit::Failure, "the server returned no device token"))?;
    if json {
        print(&format!("{}\n", json!({"id": device.id, "token": token})))
    } else {
        print(&format!("{} {}\n", device.id, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, name: &str) -> DeviceObject {
        serde_json::from_value(json!({"id": id, "name": name})).expect("device object")
    }

    #[test]
    fn devices_by_id_or_unique_name() {
        let fleet = || {
            vec![
                device("d1", "porch"),
                device("d2", "lamp"),
                device("d3", "lamp"),
                device("d4", "d1"),
            ]
        };
        assert_eq!(pick_device(fleet(), "d1").expect("id").id, "d1");
        assert_eq!(pick_device(fleet(), "porch").expect("name").id, "d1");
        let ambiguous = pick_device(fleet(), "lamp").expect_err("two lamps");
        assert_eq!(ambiguous.exit, Exit::Usage);
        assert!(
            ambiguous.message.contains("lamp (d2), lamp (d3)"),
            "{}",
            ambiguous.message
        );
        assert_eq!(
            pick_device(fleet(), "attic").expect_err("none").exit,
            Exit::NotFound
        );
    }

    #[test]
    fn shadow_set_wraps_plain_objects_as_desired() {
        assert_eq!(
            shadow_update(json!({"on": true}), None).expect("ok"),
            json!({"state": {"desired": {"on": true}}})
        );
        assert_eq!(
            shadow_update(json!({"state": {"reported": {"x": 1}}}), Some(4)).expect("ok"),
            json!({"state": {"reported": {"x": 1}}, "version": 4})
        );
        let failure = shadow_update(json!([1]), None).expect_err("not an object");
        assert_eq!(failure.exit, Exit::Usage);
    }
}
