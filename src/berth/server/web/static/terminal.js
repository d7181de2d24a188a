// berth browser terminal: xterm.js (loaded on first use, from /static/vendor/) joined to the gateway's
// /s/<id>/terminal WebSocket. The server is the SSH client; this page only sends keystrokes and sizes and shows
// the bytes it gets, so no password or key is ever here. Binary frames are terminal bytes; text frames are JSON
// (we send {"type":"resize"}, the server sends {"type":"error"|"exit"} before it closes). Closing the panel closes
// the WebSocket, which ends the SSH login.
"use strict";

(() => {
  const panel = document.getElementById("terminal-panel");
  if (!panel) return;
  const box = panel.querySelector(".terminal-screen");
  const stateLine = panel.querySelector("#terminal-state");
  const FONT = { family: getComputedStyle(document.documentElement).getPropertyValue("--mono").trim() || "monospace", size: 14 };
  let current = null;
  let xtermLoading = null;
  const styleNonce = panel.dataset.styleNonce;
  delete panel.dataset.styleNonce;  // kept here only, out of the DOM

  // xterm.js 6 writes its CSS (cell sizes, colors) into <style> elements, which the page's CSP refuses unless they
  // carry this response's nonce. It takes no nonce option, so every <style> made on this page gets it at creation
  // (before insertion, which is when the browser checks it). Markup injected into the page still cannot style it.
  function stampStyleNonces() {
    if (!styleNonce || Document.prototype.createElement.berthNonce) return;
    const create = Document.prototype.createElement;
    const stamped = function createElement(name, options) {
      const element = create.call(this, name, options);
      if (String(name).toLowerCase() === "style") element.setAttribute("nonce", styleNonce);
      return element;
    };
    stamped.berthNonce = true;
    Document.prototype.createElement = stamped;
  }

  function state(text) {
    stateLine.textContent = text;
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // the page's colors, light or dark
  function theme() {
    return { background: css("--bg-sunken"), foreground: css("--fg"), cursor: css("--accent"), selectionBackground: css("--accent-soft") };
  }
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (current) current.term.options.theme = theme();
  });

  // xterm.js is ~300 kB: fetched only when someone opens a terminal (a script and a stylesheet of our own origin).
  function loadXterm() {
    stampStyleNonces();
    if (window.Terminal) return Promise.resolve();
    xtermLoading ??= new Promise((resolve, reject) => {
      const link = Object.assign(document.createElement("link"), { rel: "stylesheet", href: "/static/vendor/xterm.css" });
      document.head.append(link);
      const script = Object.assign(document.createElement("script"), { src: "/static/vendor/xterm.js" });
      script.addEventListener("load", () => resolve());
      script.addEventListener("error", () => { xtermLoading = null; reject(new Error("xterm.js did not load")); });
      document.head.append(script);
    });
    return xtermLoading;
  }

  // The cell size as xterm laid it out (its screen is cols × rows cells; no fit addon needed), so the box's size
  // gives the columns and rows that fill it.
  function cellSize(term) {
    const screen = box.querySelector(".xterm-screen");
    if (!screen || !screen.clientWidth) return null;
    return { width: screen.clientWidth / term.cols, height: screen.clientHeight / term.rows };
  }

  function fit(cell) {
    const width = box.clientWidth - 8, height = box.clientHeight - 8;  // the screen's padding
    return { cols: Math.max(2, Math.min(1000, Math.floor(width / cell.width))),
             rows: Math.max(1, Math.min(500, Math.floor(height / cell.height))) };
  }

  async function open() {
    if (current && !current.ended) {
      current.term.focus();
      return;
    }
    if (current) close();  // the last one ended: start afresh
    panel.hidden = false;
    state("loading…");
    try {
      await loadXterm();
    } catch (exc) {
      state(`cannot start the terminal: ${exc.message}`);
      return;
    }
    panel.scrollIntoView({ block: "nearest" });
    const term = new window.Terminal({ cursorBlink: true, scrollback: 5000, fontFamily: FONT.family, fontSize: FONT.size, theme: theme() });
    term.open(box);
    const cell = cellSize(term);
    const size = cell ? fit(cell) : { cols: term.cols, rows: term.rows };
    term.resize(size.cols, size.rows);
    const url = new URL(`${panel.dataset.ws}?cols=${size.cols}&rows=${size.rows}`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const session = { term, ws, ended: false, size, said: null };
    current = session;
    const encoder = new TextEncoder();
    const send = (data) => ws.readyState === WebSocket.OPEN && ws.send(data);

    state("connecting…");
    ws.addEventListener("open", () => { state("connected"); term.focus(); });
    ws.addEventListener("message", (event) => {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data));
        return;
      }
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.type === "exit") session.said = `the shell exited${message.status == null ? "" : ` (status ${message.status})`}`;
      else if (message.type === "error") session.said = message.message;
      if (session.said) state(session.said);
    });
    ws.addEventListener("close", () => {
      session.ended = true;
      if (current === session) state(session.said || "disconnected: press Terminal to open a new one");
    });
    term.onData((data) => send(encoder.encode(data)));
    term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    session.observer = new ResizeObserver(() => {
      if (!cell) return;
      const next = fit(cell);
      if (next.cols === session.size.cols && next.rows === session.size.rows) return;
      session.size = next;
      term.resize(next.cols, next.rows);
      send(JSON.stringify({ type: "resize", cols: next.cols, rows: next.rows }));
    });
    session.observer.observe(box);
  }

  function close() {
    if (current) {
      current.observer?.disconnect();
      current.ws.close();
      current.term.dispose();
      current = null;
    }
    box.replaceChildren();
    panel.hidden = true;
    state("");
  }

  // The Terminal button sits in the live part of the page, which htmx replaces: listen on the document.
  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-terminal-open]")) open();
  });
  panel.querySelector("#terminal-close").addEventListener("click", close);
})();
