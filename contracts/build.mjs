#!/usr/bin/env node
// Compiles Solidity sources with the pinned solc-js of hil-tests/package.json and writes,
// for every contract they define, NAME.abi.json and NAME.bin (deployment bytecode, hex).
//
//   node contracts/build.mjs                      BiotaAnchor.sol into contracts/build/
//   node contracts/build.mjs --out-dir DIR A.sol  other sources, or elsewhere
//
// Source paths are taken relative to the repository root and are the names solc sees (they
// end up in the metadata, hence in the bytecode): run it from anywhere, the output is the
// same. The settings below are the ones documented in contracts/README.md; changing one
// changes the committed bytecode.
// Needs `npm ci` in hil-tests/ first (scripts/test does it).

import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(repo, "hil-tests", "package.json"));
const solc = require("solc");

export const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  viaIR: false,
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function parseArgs(argv) {
  let outDir = path.join(repo, "contracts", "build");
  const sources = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out-dir") {
      if (i + 1 >= argv.length) throw new Error("--out-dir needs a directory");
      outDir = path.resolve(argv[++i]);
    } else if (argv[i].startsWith("-")) {
      throw new Error(`unknown option ${argv[i]}`);
    } else {
      sources.push(argv[i]);
    }
  }
  if (sources.length === 0) sources.push(path.join(repo, "contracts", "BiotaAnchor.sol"));
  return { outDir, sources };
}

function sourceName(file) {
  const rel = path.relative(repo, path.resolve(file));
  if (rel.startsWith("..") || path.isAbsolute(rel)) {
    throw new Error(`${file}: not inside the repository ${repo}`);
  }
  return rel.split(path.sep).join("/");
}

function findImports(name) {
  const file = path.join(repo, name);
  return fs.existsSync(file)
    ? { contents: fs.readFileSync(file, "utf8") }
    : { error: `import ${name}: no such file under ${repo}` };
}

function main() {
  const { outDir, sources } = parseArgs(process.argv.slice(2));
  const input = { language: "Solidity", sources: {}, settings: SETTINGS };
  for (const file of sources) {
    input.sources[sourceName(file)] = { content: fs.readFileSync(file, "utf8") };
  }
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(1);

  fs.mkdirSync(outDir, { recursive: true });
  for (const name of Object.keys(input.sources)) {
    for (const [contract, out] of Object.entries(output.contracts[name] || {})) {
      const bin = out.evm.bytecode.object;
      if (!bin) continue; // an interface or abstract contract: nothing to deploy
      fs.writeFileSync(path.join(outDir, `${contract}.abi.json`), JSON.stringify(out.abi, null, 2) + "\n");
      fs.writeFileSync(path.join(outDir, `${contract}.bin`), bin + "\n");
      console.log(`${name}:${contract} -> ${path.join(outDir, contract)}.{abi.json,bin} (${bin.length / 2} bytes, solc ${solc.version()})`);
    }
  }
}

main();
