// berth instance dashboard: resource charts (uPlot, polling the page's JSON) and the live console (plain
// EventSource on /sessions/<id>/console/stream: no htmx-ext-sse, since lines are appended as text nodes here
// and the extension would swap HTML). Colors come from the CSS variables, so light and dark both read well.
"use strict";

(() => {
  const CHARTS = {
    cpu: { series: [["cpu", "CPU"]], unit: "%" },
    mem: { series: [["mem_mb", "RSS"]], unit: "MB" },
    net: { series: [["net_rx_mbs", "received"], ["net_tx_mbs", "sent"]], unit: "MB/s" },
    disk: { series: [["disk_read_mbs", "read"], ["disk_write_mbs", "written"]], unit: "MB/s" },
    gpu: { series: [["gpu_util", "GPU"]], unit: "%", gpu: true },
    gpumem: { series: [["gpu_mem_used_mb", "used"], ["gpu_mem_total_mb", "total"]], unit: "MB", gpu: true },
  };
  const MAX_CONSOLE_LINES = 5000;

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // `span` holds the picked range's [start, end] (seconds): the x axis shows the whole range, not just the samples.
  function options(spec, width, span = {}) {
    const fg = css("--fg-muted"), grid = css("--border");
    const colors = [css("--accent"), css("--warn")];
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    return {
      width, height: 170, legend: { show: true }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (u, min, max) => [span.start ?? min, span.end ?? max] }, y: { range: (u, min, max) => [0, Math.max(max || 0, spec.unit === "%" ? 10 : 1) * 1.1] } },
      axes: [axis, { ...axis, size: 76, values: (u, ticks) => ticks.map((v) => `${+v.toFixed(2)} ${spec.unit}`) }],
      series: [{}, ...spec.series.map(([, label], i) => ({
        label, stroke: colors[i], width: 1.5, fill: i === 0 ? colors[0] + "22" : undefined, spanGaps: false,
        value: (u, v) => (v == null ? "—" : `${+v.toFixed(2)} ${spec.unit}`),
      }))],
    };
  }

  function plotData(spec, body) {
    return [body.t, ...spec.series.map(([key]) => body.series[key] || body.t.map(() => null))];
  }

  class Charts {
    constructor(root) {
      this.root = root;
      this.range = "1h";
      this.plots = {};
      this.last = null;
      this.span = {};
      root.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => this.pick(b)));
      new ResizeObserver(() => this.resize()).observe(root);
      matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.rebuild());
      this.poll();
      setInterval(() => document.hidden || this.poll(), Number(root.dataset.pollMs) || 5000);
    }

    pick(button) {
      this.root.querySelectorAll("[data-range]").forEach((b) => {
        b.classList.toggle("selected", b === button);
        b.setAttribute("aria-pressed", String(b === button));
      });
      this.range = button.dataset.range;
      this.poll();
    }

    async poll() {
      const range = this.range;
      try {
        const res = await fetch(`${this.root.dataset.source}?range=${range}`, { credentials: "same-origin", cache: "no-store" });
        if (!res.ok || range !== this.range) return;
        this.show(await res.json());
      } catch (err) { /* the next poll tries again */ }
    }

    show(body) {
      this.last = body;
      this.span.start = body.start;
      this.span.end = body.end;
      for (const [key, spec] of Object.entries(CHARTS)) {
        const figure = this.root.querySelector(`[data-chart="${key}"]`);
        const empty = figure.querySelector(".chart-empty");
        const missing = spec.gpu && !body.gpu ? "No GPU on this worker" : body.t.length === 0 ? "No samples in this range yet" : "";
        empty.hidden = !missing;
        empty.textContent = missing;
        figure.classList.toggle("is-empty", Boolean(missing));
        figure.dataset.points = missing ? "0" : String(body.t.length);
        if (missing) {
          if (this.plots[key]) { this.plots[key].destroy(); delete this.plots[key]; }
          continue;
        }
        const data = plotData(spec, body);
        if (this.plots[key]) {
          this.plots[key].setData(data);
        } else {
          const target = figure.querySelector(".chart-plot");
          this.plots[key] = new uPlot(options(spec, target.clientWidth || 400, this.span), data, target);
        }
      }
    }

    resize() {
      for (const [key, plot] of Object.entries(this.plots)) {
        const target = this.root.querySelector(`[data-chart="${key}"] .chart-plot`);
        if (target.clientWidth && target.clientWidth !== plot.width) plot.setSize({ width: target.clientWidth, height: 170 });
      }
    }

    rebuild() {
      Object.values(this.plots).forEach((p) => p.destroy());
      this.plots = {};
      if (this.last) this.show(this.last);
    }
  }

  // How long four charts of `points` points take to draw here (performance.now(), construction to the last
  // draw hook): the dashboard's budget is 100 ms for 3,600 points each.
  async function benchmark(points = 3600) {
    const box = document.createElement("div");
    box.style.cssText = "position:absolute;left:0;top:0;width:560px;visibility:hidden";
    document.body.appendChild(box);
    const now = Math.floor(Date.now() / 1000);
    const t = Array.from({ length: points }, (_, i) => now - points + i);
    const wave = (k) => t.map((_, i) => 50 + 40 * Math.sin(i / (30 + k)));
    const start = performance.now();
    const drawn = [];
    const done = new Promise((resolve) => {
      for (let k = 0; k < 4; k++) {
        const spec = Object.values(CHARTS)[k];
        const opts = options(spec, 560);
        opts.hooks = { draw: [() => { drawn.push(performance.now()); if (drawn.length === 4) resolve(); }] };
        new uPlot(opts, [t, ...spec.series.map((_, j) => wave(k + j))], box);
      }
    });
    await done;
    const ms = Math.max(...drawn) - start;
    box.remove();
    return ms;
  }

  function follow(pre) {
    const state = document.getElementById("console-state");
    const source = new EventSource(pre.dataset.stream);
    const say = (text) => { if (state) state.textContent = text; };
    source.onopen = () => say("live");
    source.onerror = () => say(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
    source.addEventListener("end", () => { source.close(); say("session ended"); });
    source.onmessage = (event) => {
      const line = JSON.parse(event.data);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;  // before this line: the user's choice
      const row = document.createElement("div");
      row.className = `line level-${line.level === "error" || line.level === "warning" ? line.level : "info"}`;
      const ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = new Date(line.ts).toLocaleTimeString();
      row.append(ts, document.createTextNode(" " + line.message));  // text, never HTML
      pre.appendChild(row);
      while (pre.childElementCount > MAX_CONSOLE_LINES) pre.firstElementChild.remove();
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
    window.addEventListener("pagehide", () => source.close());
  }

  function start() {
    const charts = document.getElementById("charts");
    const dashboard = { benchmark };
    if (charts && window.uPlot) dashboard.charts = new Charts(charts);
    const pre = document.getElementById("console");
    if (pre) follow(pre);
    window.berthDashboard = dashboard;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
