// The HTTP half of PROTOCOL.md: JSON under /v1 with `Authorization: Bearer` (never a token in a
// URL: URLs end up in logs and browser history).

import { PAGE_BASE } from "./gateways.js";

// Where calls go: the page's own gateway until app.js hands over its Gateways list (gateways.js),
// then whichever gateway the page is using now.
let gateways = null;

export function useGateways(list) {
  gateways = list;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// One call; a PROTOCOL.md error answer ({"error": {"code", "message"}}) becomes an ApiError.
// `token` null means an unauthenticated call (the development sign-in).
export async function request(method, path, { token = null, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const url = gateways ? gateways.httpUrl(path) : PAGE_BASE + "/v1" + path;
  const response = await fetch(url, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "internal", error.message || response.statusText);
  }
  return data;
}
