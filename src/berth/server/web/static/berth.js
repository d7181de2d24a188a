// berth pages: copy buttons, password reveal, confirmations. Delegated listeners, so parts htmx swaps in work too
// (the CSP allows no inline handlers).
"use strict";

function textOf(el) {
  return el.dataset.secret !== undefined ? el.dataset.secret : el.textContent.trim();
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");  // plain http on another host: the older way
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

function flash(button, label) {
  button.classList.add("done");
  const title = button.title;
  button.title = label;
  setTimeout(() => { button.classList.remove("done"); button.title = title; }, 1200);
}

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.querySelector(copy.dataset.copy);
    if (!source) return;
    try {
      await copyText(textOf(source));
      flash(copy, "Copied");
    } catch (err) {
      flash(copy, "Could not copy: select the text instead");
    }
    return;
  }
  const reveal = event.target.closest("[data-reveal]");
  if (reveal) {
    const secret = document.querySelector(reveal.dataset.reveal);
    if (!secret) return;
    const shown = reveal.getAttribute("aria-pressed") === "true";
    secret.textContent = shown ? "••••••••••" : secret.dataset.secret;
    secret.classList.toggle("revealed", !shown);
    reveal.setAttribute("aria-pressed", String(!shown));
    reveal.title = shown ? "Show password" : "Hide password";
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// Launch form: Import Configuration reads the chosen file here and posts its text for a preview (nothing is
// launched); the queue warning follows the queue chosen.
document.addEventListener("change", (event) => {
  const picker = event.target.closest("[data-import-file]");
  if (picker && picker.files.length) {
    const form = picker.form;
    picker.files[0].text().then((text) => {
      form.elements.document.value = text;
      form.submit();
    });
    return;
  }
  if (event.target.closest("[data-queue-select]") || event.target.id === "f-image") queueWarnings();
});

// The launch form says at once when the chosen queue has no online worker, or none that runs container images.
function queueWarnings() {
  const queue = document.querySelector("[data-queue-select]");
  if (!queue || !queue.selectedOptions.length) return;
  const option = queue.selectedOptions[0].dataset;
  const image = document.getElementById("f-image");
  const unserved = document.getElementById("queue-warning");
  const unable = document.getElementById("queue-image-warning");
  if (unserved) unserved.hidden = option.workers !== "0";
  if (unable) unable.hidden = !(image && image.value.trim() && option.workers !== "0" && option.containerWorkers === "0");
}
