// Copies the browser builds of the chat page's libraries, and their licences, from node_modules (as
// `npm ci` installed them from package-lock.json) into static/vendor/, and records what was copied in
// static/vendor/vendored.json: each package's version and licence as the lockfile pins them, and the
// sha256 of every file. `make vendor` runs `npm ci` and then this script; the output is committed, so
// the page itself needs no build step (issue #15).

import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "static", "vendor");

// What the page loads from each package (ES modules, imported by static/markdown.js) and its licence
// texts, each copied as `<package>/<name>`. DOMPurify's ES build is `.mjs` upstream and the licences
// have no extension: they are copied as `.js` and `.txt`, so that any static file server (Python's
// `mimetypes` without /etc/mime.types included) serves them as JavaScript, which browsers require of a
// module script, and as text.
const FILES = {
  marked: { "lib/marked.esm.js": "marked.esm.js", LICENSE: "LICENSE.txt" },
  // DOMPurify is dual-licensed (MPL-2.0 or Apache-2.0): both texts are copied.
  dompurify: { "dist/purify.es.mjs": "purify.es.js", LICENSE: "LICENSE.txt", "LICENSE-MPL": "LICENSE-MPL.txt" },
};

const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));

function sha256(path) {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

rmSync(target, { recursive: true, force: true });
const vendored = {};
for (const [name, files] of Object.entries(FILES)) {
  const pinned = lock.packages[`node_modules/${name}`];
  const installed = JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8"));
  if (!pinned || installed.version !== pinned.version) {
    throw new Error(`${name}: ${installed.version} is installed, the lockfile pins ${pinned?.version}; run npm ci`);
  }
  mkdirSync(join(target, name), { recursive: true });
  const copied = {};
  for (const [from, to] of Object.entries(files)) {
    copyFileSync(join(here, "node_modules", name, from), join(target, name, to));
    copied[`${name}/${to}`] = { from, sha256: sha256(join(target, name, to)) };
  }
  vendored[name] = { version: pinned.version, license: pinned.license, integrity: pinned.integrity, files: copied };
}
writeFileSync(join(target, "vendored.json"), `${JSON.stringify(vendored, null, 2)}\n`);
for (const [name, entry] of Object.entries(vendored)) {
  console.log(`vendored ${name} ${entry.version} (${entry.license}): ${Object.keys(entry.files).join(", ")}`);
}
