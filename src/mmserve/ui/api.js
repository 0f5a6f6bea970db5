// The server's API as the page uses it: every call sends the key the operator gave (kept in this
// tab's sessionStorage), and a failed call throws an ApiError carrying the API's own message.
// Paths are relative ("api/v1/", not "/api/v1/"): the page lives at /ui, so they resolve against
// the server's root, or a proxy's path prefix.

const KEY = "mmserve.apiKey";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

function headers(json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = apiKey.get();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function send(path, { method = "GET", body, signal } = {}) {
  const json = body !== undefined;
  const response = await fetch(path, {
    method,
    signal,
    headers: headers(json),
    body: json ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** The API's error envelope ({"error": {"message", "code"}}) as an ApiError. */
async function errorOf(response) {
  try {
    const { error } = await response.json();
    if (error && error.message) return new ApiError(response.status, error.message, error.code);
  } catch {
    // not JSON: fall through to the status line
  }
  return new ApiError(response.status, `${response.status} ${response.statusText}`);
}

/** JSON (or text, for /metrics) of one call; throws ApiError. */
export async function call(path, options) {
  const response = await send(path, options);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** The lines of a streamed answer (ndjson or server-sent events) as they arrive. */
export async function* lines(path, options) {
  const response = await send(path, options);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const parts = buffer.split("\n");
    buffer = parts.pop();
    yield* parts;
  }
  if (buffer) yield buffer;
}
