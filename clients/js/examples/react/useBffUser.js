// A React hook over the client: the signed-in user as state, updated centrally when the session ends.
import { useEffect, useState } from "react";
import { onSessionExpired, user } from "@bff/client";

/**
 * The signed-in user: `{status, user, error}`, where `status` is `"loading"`, `"signed-in"`,
 * `"signed-out"`, `"expired"` (a call found the session over: `bff:session-expired`) or `"error"`
 * (the BFF could not answer, e.g. a 503 `store-unavailable`: the session may well be fine).
 * @returns {{status: "loading"|"signed-in"|"signed-out"|"expired"|"error", user: import("@bff/client").BffUser|null, error: unknown}}
 */
export function useBffUser() {
  const [state, setState] = useState({ status: "loading", user: null, error: null });
  useEffect(() => {
    let mounted = true;
    const set = (next) => mounted && setState(next);
    user().then(
      (me) => set({ status: me ? "signed-in" : "signed-out", user: me, error: null }),
      (error) => set({ status: "error", user: null, error }),
    );
    const stop = onSessionExpired(() => set({ status: "expired", user: null, error: null }));
    return () => {
      mounted = false;
      stop();
    };
  }, []);
  return state;
}
