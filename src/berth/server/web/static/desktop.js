// The desktop page: noVNC on the gateway's WebSocket /s/<id>/vnc (the session-scoped cookie opens it; no VNC
// password: authentication is the gateway's). The remote desktop follows the window (resizeSession), the
// clipboard goes both ways through the panel (and the Async Clipboard API where the browser allows it).
import RFB from "/static/vendor/novnc/core/rfb.js";

const screen = document.getElementById("screen");
const status = document.getElementById("desktop-status");
const reconnect = document.getElementById("reconnect");
const panel = document.getElementById("clipboard-panel");
const toggle = document.getElementById("clipboard-toggle");
const text = document.getElementById("clipboard-text");
let rfb = null;
let lastLocalClipboard = "";

function setStatus(state, message) {
  status.dataset.state = state;
  status.textContent = message;
  reconnect.hidden = state !== "disconnected";
}

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${screen.dataset.wsPath}`;
}

// A refused WebSocket tells the page nothing; the browser link itself says why (without following a redirect).
async function whyClosed(clean) {
  try {
    const answer = await fetch(screen.dataset.entry, { redirect: "manual", cache: "no-store", credentials: "same-origin" });
    if (answer.type === "opaqueredirect") return "your access to this session ended: reload the page to log in again";
    if (answer.status === 409) return "the session is not running: there is nothing to connect to";
    if (answer.status === 404) return "the session no longer exists, or you no longer have access to it";
  } catch (err) {
    return "the server cannot be reached";
  }
  return clean ? "the desktop closed the connection" : "the connection was lost";
}

function connect() {
  setStatus("connecting", "connecting…");
  rfb = new RFB(screen, wsUrl(), { wsProtocols: ["binary"] });
  rfb.resizeSession = true;  // the remote desktop takes the window's size
  rfb.scaleViewport = false;
  rfb.clipViewport = false;
  rfb.focusOnClick = true;
  // JPEG quality 5 of 9 (noVNC's default is 6): on busy pictures 6 needs ~44 Mbps, 5 ~27 Mbps at the same
  // frame rate and looks the same (bench/gateway.py, desktop section).
  rfb.qualityLevel = 5;
  rfb.addEventListener("connect", () => {
    setStatus("connected", "connected");
    rfb.focus();
  });
  rfb.addEventListener("disconnect", async (event) => {
    rfb = null;
    setStatus("disconnected", "disconnected…");
    setStatus("disconnected", `disconnected: ${await whyClosed(event.detail.clean)}`);
  });
  rfb.addEventListener("credentialsrequired", () => {
    rfb.disconnect();  // never ask for a VNC password: the desktop should not have one
    setStatus("disconnected", "disconnected: the desktop asked for a password");
  });
  rfb.addEventListener("securityfailure", (event) => {
    setStatus("disconnected", `disconnected: ${event.detail.reason || "the desktop refused the connection"}`);
  });
  rfb.addEventListener("desktopname", (event) => {
    if (event.detail.name) document.title = `${event.detail.name} · berth`;
  });
  rfb.addEventListener("clipboard", (event) => {
    text.value = event.detail.text;
    lastLocalClipboard = event.detail.text;
    if (navigator.clipboard && window.isSecureContext && document.hasFocus()) {
      navigator.clipboard.writeText(event.detail.text).catch(() => {});  // not allowed here: the panel has it
    }
  });
}

// Where the browser already allows reading the clipboard, what was copied locally reaches the desktop when the
// user comes back to the page; never a permission prompt from here.
async function offerLocalClipboard() {
  if (!rfb || !navigator.clipboard || !window.isSecureContext || !navigator.permissions) return;
  try {
    const permission = await navigator.permissions.query({ name: "clipboard-read" });
    if (permission.state !== "granted") return;
    const local = await navigator.clipboard.readText();
    if (local && local !== lastLocalClipboard) {
      lastLocalClipboard = local;
      text.value = local;
      rfb.clipboardPasteFrom(local);
    }
  } catch (err) {
    // not readable now (the page has no focus, or the browser refuses): the panel still works
  }
}

reconnect.addEventListener("click", () => {
  if (!rfb) connect();
});
toggle.addEventListener("click", () => {
  panel.hidden = !panel.hidden;
  toggle.setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) text.focus();
  else if (rfb) rfb.focus();
});
document.getElementById("clipboard-send").addEventListener("click", () => {
  if (rfb) {
    lastLocalClipboard = text.value;
    rfb.clipboardPasteFrom(text.value);
    rfb.focus();
  }
});
document.getElementById("clipboard-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(text.value);
  } catch (err) {
    text.select();
    document.execCommand("copy");
  }
});
window.addEventListener("focus", offerLocalClipboard);

connect();
