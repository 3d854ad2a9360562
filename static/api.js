// The page's HTTP calls to the public API: JSON in and out, the optional API key as a bearer token,
// errors as ApiError with the service's own message.

let apiKeyOf = () => "";

// Where the page keeps the API key the user typed (read at every call, so a change applies at once).
export function useApiKey(read) {
  apiKeyOf = read;
}

// Relative to the page (/ui), so the page also works behind a proxy that adds a path prefix.
export function apiUrl(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  return url.toString();
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(path, { method = "GET", body, params } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKeyOf();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(apiUrl(path, params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : response.statusText;
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
  return data;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The client chooses the message_id, so a retry after a dropped connection or a 503 can never start a
// second answer: the service treats the same id as the same message.
export async function postChat(body) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api("chat", { method: "POST", body });
    } catch (error) {
      const retriable = !(error instanceof ApiError) || [502, 503, 504].includes(error.status);
      if (!retriable || attempt >= 3) throw error;
      await sleep(500 * attempt);
    }
  }
}
