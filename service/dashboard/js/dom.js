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

// Runs `send` unless a send of this form is in progress. aria-disabled, not disabled:
// a disabled button loses the keyboard's focus to the page's top.
export async function sendingOnce(form, send) {
  if (form.dataset.sending === "true") {
    return;
  }
  const button = form.querySelector("button[type=submit]");
  form.dataset.sending = "true";
  button.setAttribute("aria-disabled", "true");
  try {
    await send();
  } finally {
    delete form.dataset.sending;
    button.removeAttribute("aria-disabled");
  }
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

// Draws a list into `container`, one node per item, redrawing only the items whose
// data changed: an unchanged row keeps its node, so a button is never replaced
// under the pointer by a poll that brought nothing new for it.
const drawnItems = new WeakMap();

export function drawList(container, items, keyOf, draw) {
  const previous = drawnItems.get(container) ?? new Map();
  const current = new Map();
  const nodes = items.map((item) => {
    const key = keyOf(item);
    const text = JSON.stringify(item);
    const kept = previous.get(key);
    const node = kept && kept.text === text ? kept.node : draw(item);
    current.set(key, { text, node });
    return node;
  });
  drawnItems.set(container, current);
  // Nothing moved: leave the DOM alone (re-inserting a node would take its focus).
  const unchanged = nodes.length === container.children.length && nodes.every((node, index) => container.children[index] === node);
  if (!unchanged) {
    container.replaceChildren(...nodes);
  }
}

// For a list that may be empty: a placeholder instead, and nothing kept.
export function drawListOr(container, items, keyOf, draw, emptyNode) {
  if (items.length === 0) {
    drawnItems.delete(container);
    container.replaceChildren(emptyNode());
    return;
  }
  drawList(container, items, keyOf, draw);
}
