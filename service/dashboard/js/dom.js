// Small DOM helpers. Text from the API only ever reaches the page through
// textContent or attributes, never innerHTML, so a model or class name cannot
// inject markup.

export function element(tag, { className, text, attributes } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined && text !== null) {
    node.textContent = String(text);
  }
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value !== undefined && value !== null && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child);
    }
  }
  return node;
}

export function button(text, onClick, attributes = {}) {
  const node = element("button", { text, attributes: { type: "button", ...attributes } });
  node.addEventListener("click", onClick);
  return node;
}

// A bar for a fraction from 0 to 1, exposed to assistive technology (and tests)
// through the ARIA progressbar attributes.
export function progressBar(fraction, label) {
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  const fill = element("div", { className: "bar-fill" });
  fill.style.width = `${percent}%`;
  return element(
    "div",
    {
      className: "bar",
      attributes: {
        role: "progressbar",
        "aria-valuemin": 0,
        "aria-valuemax": 100,
        "aria-valuenow": percent,
        "aria-label": label,
      },
    },
    [fill, element("span", { className: "bar-text", text: `${percent}%` })],
  );
}

export function showMessage(target, text, kind = "error") {
  target.textContent = text;
  target.dataset.kind = kind;
  target.hidden = !text;
}

export function clearMessage(target) {
  showMessage(target, "", "info");
}

export function formatNumber(value, digits = 4) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

export function formatTime(text) {
  return text ? new Date(text).toLocaleString() : "";
}
