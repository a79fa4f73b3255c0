// src/bff.d.ts declares exactly what src/bff.js exports: the same names, the same `myAccount` helpers and
// the same BffError fields, read from the declarations with the TypeScript compiler's own API.
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import ts from "typescript";

import { load } from "./harness.mjs";

const DECLARATIONS = fileURLToPath(new URL("../src/bff.d.ts", import.meta.url));

let cached;

/** The names the declarations give values, with helpers to list a value's or a class's members. */
function declared() {
  cached ??= read();
  return cached;
}

function read() {
  const program = ts.createProgram([DECLARATIONS], { strict: true, noEmit: true, lib: ["lib.es2022.d.ts", "lib.dom.d.ts"], types: [] });
  const diagnostics = ts.getPreEmitDiagnostics(program);
  assert.deepEqual(diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n")), []);
  const checker = program.getTypeChecker();
  const module = checker.getSymbolAtLocation(program.getSourceFile(DECLARATIONS));
  const exports = checker.getExportsOfModule(module);
  const values = exports.filter((symbol) => symbol.flags & ts.SymbolFlags.Value);
  const members = (name) => {
    const symbol = values.find((s) => s.name === name);
    const type = checker.getTypeOfSymbol(symbol);
    return checker.getPropertiesOfType(type).map((p) => p.name).sort();
  };
  const instance = (name) => {
    const symbol = values.find((s) => s.name === name);
    const type = checker.getDeclaredTypeOfSymbol(symbol);
    return checker.getPropertiesOfType(type).map((p) => p.name).sort();
  };
  return { values: values.map((s) => s.name).sort(), members, instance };
}

test("every runtime export is declared, and nothing more", async () => {
  const { client } = await load();
  assert.deepEqual(declared().values, Object.keys(client).sort());
});

test("every myAccount helper is declared, and nothing more", async () => {
  const { client } = await load();
  assert.deepEqual(declared().members("myAccount"), Object.keys(client.myAccount).sort());
});

test("BffError's declared fields are the ones an instance has", async () => {
  const { client } = await load();
  const error = new client.BffError(401, { login_url: "/bff/login" });
  const getters = Object.entries(Object.getOwnPropertyDescriptors(client.BffError.prototype))
    .filter(([, descriptor]) => descriptor.get)
    .map(([name]) => name);
  const runtime = new Set([...Object.keys(error), ...getters, "message", "stack", "cause"]);
  assert.deepEqual(declared().instance("BffError"), [...runtime].sort());
});
