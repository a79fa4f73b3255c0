// Bundle the React example into a directory the BFF can serve (BFF_STATIC_DIR): index.html and app.js.
// Usage: node examples/react/build.mjs [outdir]   (default examples/react/dist)
import { copyFileSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(process.argv[2] ?? path.join(here, "dist"));
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: [path.join(here, "app.jsx")],
  outfile: path.join(outdir, "app.js"),
  bundle: true,
  format: "esm",
  jsx: "automatic",
  minify: true,
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
copyFileSync(path.join(here, "index.html"), path.join(outdir, "index.html"));
console.log(`built the React example into ${outdir}`);
