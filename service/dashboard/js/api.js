// Every call to the service goes through here: the key is sent on each one, and a
// refusal becomes a sentence a person can act on instead of a silent failure.

const KEY_NAME = "daciavision.api_key";

export function storedKey() {
  return sessionStorage.getItem(KEY_NAME) ?? localStorage.getItem(KEY_NAME) ?? "";
}

export function keyIsRemembered() {
  return localStorage.getItem(KEY_NAME) !== null;
}

// sessionStorage by default: the key is gone when the tab closes. localStorage
// only when the user asks to be remembered on this device.
export function storeKey(key, remember) {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  if (key) {
    (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
  }
}

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function explain(status, detail) {
  if (status === 401) {
    return storedKey()
      ? "A key is needed: the API key you entered was not accepted. Check it, or ask the operator for a new one."
      : "A key is needed: enter an API key at the top of the page.";
  }
  // The service names the scope the route needs (detail.required_scope).
  if (status === 403 && detail.required_scope) {
    const scope = detail.required_scope;
    const allowed = scope === "admin" ? "admin" : `${scope} or admin`;
    return `This key lacks the ${scope} scope: use a key with ${allowed}.`;
  }
  return detail.message ?? `The service answered ${status}.`;
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    if (body.detail && typeof body.detail === "object") {
      return body.detail;
    }
    return { message: String(body.detail ?? response.statusText) };
  } catch {
    return { message: `The service answered ${response.status} ${response.statusText}.` };
  }
}

export async function request(
  path,
  { method = "GET", json, body, accept = "application/json", headers: extra = {} } = {},
) {
  const headers = { Accept: accept, ...extra };
  const key = storedKey();
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch {
    throw new ApiError(0, "unreachable", "The service did not answer: is it running?", {});
  }
  if (!response.ok) {
    const detail = await errorDetail(response);
    throw new ApiError(response.status, detail.code, explain(response.status, detail), detail);
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function sendJson(method, path, json, headers = {}) {
  return (await request(path, { method, json, headers })).json();
}

// A random Idempotency-Key. crypto.randomUUID exists only on HTTPS and localhost pages;
// getRandomValues everywhere, so a dashboard opened over plain HTTP on a LAN works too.
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// Builds "path?name=value&..." leaving out empty values, so the service's own
// defaults apply to whatever the user did not fill in.
export function withQuery(path, parameters) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== null && String(value) !== "") {
      query.set(name, String(value));
    }
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export function segment(value) {
  return encodeURIComponent(String(value));
}
