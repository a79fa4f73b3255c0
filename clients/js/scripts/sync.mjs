// Copy the client's source (src/bff.js, src/bff.d.ts) to the BFF's static directory, which serves them at
// /bff/static/. The copies are checked by tests/test_client_package.py: edit src/, then run `npm run sync`.
import { copyFileSync } from "node:fs";

for (const name of ["bff.js", "bff.d.ts"]) {
  const source = new URL(`../src/${name}`, import.meta.url);
  const target = new URL(`../../../bff/static/${name}`, import.meta.url);
  copyFileSync(source, target);
  console.log(`copied src/${name} -> bff/static/${name}`);
}
