// Herd Light: the customer app. Plain JavaScript served by herd-server at /app/, talking
// to the same REST API and notify stream as every other client (PROTOCOL §5, §6, §11).
"use strict";

const API = new URL("../api/v2/", location.href).href;
const STORE = "herd.app";
const $ = (id) => document.getElementById(id);

let session = JSON.parse(localStorage.getItem(STORE) || "null"); // {name, key}
const devices = new Map(); // id -> device object
let socket = null;
let socketRetry = null;
let editing = false; // a name is being edited: redraw after, not under the cursor

function status(text, error) {
  const line = $("status");
  line.textContent = text || "";
  line.classList.toggle("error", Boolean(error));
}

function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  bytes.forEach((b) => (binary += String.fromCharCode(b)));
  return btoa(binary);
}

async function api(method, path, body, authorization) {
  const headers = { "Content-Type": "application/json" };
  // `false`: no credentials at all (signing up).
  const auth = authorization === false ? null : authorization || (session && "Bearer " + session.key);
  if (auth) headers.Authorization = auth;
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || response.statusText;
    const error = new Error(message);
    error.status = response.status;
    if (response.status === 401 && session && !authorization) signedOut("Please sign in again.");
    throw error;
  }
  return data;
}

function save(next) {
  session = next;
  if (next) localStorage.setItem(STORE, JSON.stringify(next));
  else localStorage.removeItem(STORE);
}

function thirtyDays() {
  return new Date(Date.now() + 30 * 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
}

async function signIn(name, pass) {
  const key = await api(
    "POST",
    "keys",
    { name: "herd light app", scope: "operate", expires_at: thirtyDays() },
    "Basic " + base64(name + ":" + pass),
  );
  save({ name, key: key.token });
}

async function signUp(name, pass) {
  await api("POST", "app/signup", { name, pass }, false);
  await signIn(name, pass);
}

function signedOut(message) {
  save(null);
  if (socket) socket.close();
  devices.clear();
  show();
  status(message || "");
}

async function signOut() {
  try {
    const current = await api("GET", "keys/current");
    await api("DELETE", "keys/" + encodeURIComponent(current.id));
  } catch (_) {
    // The key expires on its own.
  }
  signedOut("Signed out.");
}

function show() {
  const signedIn = Boolean(session);
  $("auth").hidden = signedIn;
  $("home").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("who").textContent = signedIn ? session.name : "";
  if (signedIn) {
    load();
    listen();
  }
}

async function load() {
  try {
    const list = await api("GET", "devices");
    devices.clear();
    list.forEach((d) => devices.set(d.id, d));
    render();
  } catch (e) {
    status("Cannot load your lights: " + e.message, true);
  }
}

async function refresh(id) {
  try {
    devices.set(id, await api("GET", "devices/" + encodeURIComponent(id)));
  } catch (e) {
    if (e.status === 404) devices.delete(id);
  }
  render();
}

function lightOf(device) {
  const state = (device.shadow && device.shadow.state) || {};
  const reported = state.reported || {};
  const desired = state.desired || {};
  return {
    on: reported.on === true,
    pending: desired.on !== undefined && desired.on !== reported.on,
  };
}

function render() {
  if (editing) return;
  const list = $("devices");
  const template = $("device-row");
  list.replaceChildren();
  const sorted = [...devices.values()].sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
  for (const device of sorted) {
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.id = device.id;
    const light = lightOf(device);
    const dot = row.querySelector(".dot");
    dot.classList.toggle("online", device.online);
    dot.title = device.online ? "online" : "offline";
    row.querySelector(".name").textContent = device.name || device.id;
    const toggle = row.querySelector(".toggle");
    toggle.setAttribute("aria-checked", String(light.on));
    toggle.setAttribute("aria-label", (device.name || device.id) + (light.on ? " is on" : " is off"));
    toggle.classList.toggle("pending", light.pending);
    toggle.disabled = !device.online;
    toggle.onclick = () => switchLight(device.id, !light.on);
    row.querySelector(".rename").onclick = () => rename(row, device);
    const unpair = row.querySelector(".unpair");
    unpair.onclick = () => {
      if (unpair.dataset.armed) return unpairDevice(device.id);
      unpair.dataset.armed = "1";
      unpair.textContent = "Tap again to unpair";
      setTimeout(() => {
        delete unpair.dataset.armed;
        unpair.textContent = "Unpair";
      }, 4000);
    };
    list.appendChild(row);
  }
  $("empty").hidden = devices.size > 0;
}

async function switchLight(id, on) {
  try {
    await api("POST", "devices/" + encodeURIComponent(id) + "/shadow", { state: { desired: { on } } });
    await refresh(id);
  } catch (e) {
    status("Cannot switch: " + e.message, true);
  }
}

function rename(row, device) {
  const name = row.querySelector(".name");
  const input = document.createElement("input");
  input.className = "name";
  input.value = device.name || "";
  input.maxLength = 256;
  name.replaceWith(input);
  input.focus();
  input.select();
  editing = true;
  let done = false;
  const finish = async (keep) => {
    if (done) return;
    done = true;
    editing = false;
    const value = input.value.trim();
    if (keep && value && value !== device.name) {
      try {
        devices.set(device.id, await api("PUT", "devices/" + encodeURIComponent(device.id), { name: value }));
      } catch (e) {
        status("Cannot rename: " + e.message, true);
      }
    }
    render();
  };
  input.onkeydown = (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  };
  input.onblur = () => finish(true);
}

async function unpairDevice(id) {
  try {
    await api("POST", "devices/" + encodeURIComponent(id) + "/unpair");
    devices.delete(id);
    render();
    status("Unpaired.");
  } catch (e) {
    status("Cannot unpair: " + e.message, true);
  }
}

function listen() {
  if (socket || !session) return;
  const url = API.replace(/^http/, "ws") + "notify?access_token=" + encodeURIComponent(session.key);
  socket = new WebSocket(url);
  socket.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    if (!event || typeof event.id !== "string") return;
    const known = devices.get(event.id);
    if (event.name === "updated" && event.data && typeof event.data === "object") {
      devices.set(event.id, Object.assign({}, known || {}, event.data));
      render();
    } else if (event.name === "online" || event.name === "offline") {
      if (known) {
        known.online = event.name === "online";
        render();
      }
    } else if (event.name === "deleted") {
      devices.delete(event.id);
      render();
    } else if (known && event.name.startsWith("rpc.out.Dash.Shadow")) {
      refresh(event.id);
    }
  };
  socket.onclose = () => {
    socket = null;
    if (session && !socketRetry) {
      socketRetry = setTimeout(() => {
        socketRetry = null;
        listen();
        load();
      }, 2000);
    }
  };
}

$("auth-form").onsubmit = async (event) => {
  event.preventDefault();
  status("Signing in…");
  try {
    await signIn($("auth-name").value.trim(), $("auth-pass").value);
    status("");
    show();
  } catch (e) {
    status(e.status === 401 ? "Wrong name or password." : "Cannot sign in: " + e.message, true);
  }
};

$("signup").onclick = async () => {
  const name = $("auth-name").value.trim();
  const pass = $("auth-pass").value;
  if (!name || !pass) return status("Choose a name and a password.", true);
  status("Creating your account…");
  try {
    await signUp(name, pass);
    status("");
    show();
  } catch (e) {
    status("Cannot create the account: " + e.message, true);
  }
};

$("pair-form").onsubmit = async (event) => {
  event.preventDefault();
  const id = $("pair-id").value.trim();
  const body = { password: $("pair-pass").value.trim() };
  const name = $("pair-name").value.trim();
  if (name) body.name = name;
  try {
    const device = await api("POST", "devices/" + encodeURIComponent(id) + "/pair", body);
    devices.set(device.id, device);
    render();
    $("pair-form").reset();
    $("pair-box").open = false;
    status("Paired " + (device.name || device.id) + ".");
  } catch (e) {
    status("Cannot pair: " + e.message, true);
  }
};

$("signout").onclick = signOut;
show();
