// The React example: bundled with the client from the @bff/client package (node examples/react/build.mjs).
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { BffError, login, logout, myAccount } from "@bff/client";

import { useBffUser } from "./useBffUser.js";

const here = () => location.pathname + location.search;

function Methods() {
  const [methods, setMethods] = useState(null);
  const [problem, setProblem] = useState("");
  async function load() {
    try {
      const { authentication_methods } = await myAccount.listAuthenticationMethods();
      setMethods(authentication_methods);
    } catch (error) {
      // useBffUser already reacts to an expired session; show anything else here.
      if (!(error instanceof BffError && error.isSessionExpired)) setProblem(error.message);
    }
  }
  return (
    <section>
      <button type="button" onClick={load}>Show my sign-in methods</button>
      {problem && <p role="alert">{problem}</p>}
      {methods && (
        <ul data-testid="method-list">
          {methods.map((method) => <li key={method.id}>{method.type}</li>)}
        </ul>
      )}
    </section>
  );
}

function App() {
  const { status, user, error } = useBffUser();
  if (status === "loading") return <p data-testid="status">Loading…</p>;
  if (status === "error") return <p data-testid="status" role="alert">The server could not answer: {String(error)}</p>;
  if (status !== "signed-in") {
    return (
      <main>
        <p data-testid="status">
          {status === "expired" ? "Your session has ended. Log in again to continue." : "You are signed out."}
        </p>
        <button type="button" onClick={() => login(here())}>Log in</button>
      </main>
    );
  }
  return (
    <main>
      {typeof user.claims.picture === "string" && (
        <img src={user.claims.picture} alt="" width="48" height="48" referrerPolicy="no-referrer" />
      )}
      <p data-testid="status">Signed in as {user.claims.name} ({user.claims.email})</p>
      <Methods />
      <button type="button" onClick={() => logout()}>Log out</button>
    </main>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
