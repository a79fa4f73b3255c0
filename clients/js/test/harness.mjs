// A browser-shaped global scope for bff.js under Node: `location`, `document` (an EventTarget) and a
// scripted `fetch` that records every call. Each `load()` imports a fresh copy of the module, so the
// client's state (its settings, whether an expiry was announced) never leaks between tests.

const SOURCE = new URL("../src/bff.js", import.meta.url);
let copies = 0;

/** A Response with a JSON (or problem+json) body. */
export function json(status, body, headers = {}) {
  const type = status >= 400 ? "application/problem+json" : "application/json";
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "Content-Type": type, ...headers },
  });
}

/** A problem the BFF answers with, `urn:bff:problem:<kind>`. */
export function problem(status, kind, extra = {}, headers = {}) {
  const body = { type: `urn:bff:problem:${kind}`, title: kind, status, detail: `${kind} detail`, ...extra };
  return json(status, body, headers);
}

/**
 * Install the fake browser and import a fresh client.
 * @param {(call: {path: string, method: string, headers: Headers, body: any}) => Response | Promise<Response>} answer
 */
export async function load(answer = () => json(200, {}), { page = "/account?tab=methods" } = {}) {
  const calls = [];
  const navigations = [];
  const url = new URL(page, "https://app.example.com");
  const document = new EventTarget();
  const events = [];
  document.addEventListener("bff:session-expired", (event) => events.push(event));
  globalThis.document = document;
  globalThis.location = {
    origin: url.origin,
    href: url.href,
    pathname: url.pathname,
    search: url.search,
    assign: (target) => navigations.push(target),
  };
  globalThis.fetch = async (path, init = {}) => {
    const call = {
      path,
      method: init.method ?? "GET",
      headers: new Headers(init.headers),
      credentials: init.credentials,
      body: typeof init.body === "string" ? JSON.parse(init.body) : init.body,
    };
    calls.push(call);
    return answer(call);
  };
  copies += 1;
  const client = await import(`${SOURCE.href}?copy=${copies}`);
  return { client, calls, navigations, events, document };
}
