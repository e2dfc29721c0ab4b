// An independent verifier of proof bundles, in JavaScript: JSON.parse (as
// a browser or Node reads JSON), the canonical encoding of docs/cdm.md
// recomputed with BigInt, keccak256 (js-sha3, the library solc-js uses),
// and the Merkle walk of docs/anchoring.md (integer division by 2).
//
//   node verify_bundle.mjs bundle.json
//
// prints {"encoding": bool, "leaf": bool, "root": bool, "ts": "<ts as read>"}.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { keccak256 } = require("js-sha3");

const bundle = JSON.parse(readFileSync(process.argv[2], "utf8"));
const r = bundle.reading;

const bytes = [];
const push = (...b) => bytes.push(...b);
const int = (value, width, signed) => {
  // A string (format 2) is exact; a number (format 1) is whatever
  // JSON.parse made of it.
  let v = BigInt(typeof value === "string" ? value : Math.trunc(value));
  if (signed && v < 0n) v += 1n << BigInt(8 * width);
  for (let i = width - 1; i >= 0; i--) push(Number((v >> BigInt(8 * i)) & 0xffn));
};
const utf8 = (s) => [...Buffer.from(s, "utf8")];
const str8 = (s) => { const b = utf8(s); push(b.length, ...b); };
const hex = (h) => [...Buffer.from(h.replace(/^0x/, ""), "hex")];

const QUALITY = { good: 0, uncertain: 1, bad: 2 };
const KIND = { bool: 1, i64: 2, f64: 3, text: 4, bytes: 5 };

push(1); // encoding version
int(r.seq, 8, false);
int(r.ts, 8, true);
push(QUALITY[r.quality]);
str8(r.device);
str8(r.point);
str8(r.unit ?? "");
const source = utf8(r.source);
int(source.length, 2, false);
push(...source);
const [kind, value] = Object.entries(r.value)[0];
push(KIND[kind]);
if (kind === "bool") push(value ? 1 : 0);
else if (kind === "i64") int(value, 8, true);
else if (kind === "f64") {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(value);
  push(...b);
} else {
  const b = kind === "text" ? utf8(value) : hex(value);
  int(b.length, 4, false);
  push(...b);
}

const encoding = "0x" + Buffer.from(bytes).toString("hex");
const leaf = "0x" + keccak256(Buffer.from([0, ...bytes]));
let h = Buffer.from(leaf.slice(2), "hex");
let i = BigInt(bundle.position);
let width = BigInt(bundle.batch.count);
const siblings = bundle.proof.map((p) => Buffer.from(p.slice(2), "hex"));
const node = (a, b) => Buffer.from(keccak256(Buffer.concat([Buffer.from([1]), a, b])), "hex");
while (width > 1n) {
  if (i % 2n === 1n) h = node(siblings.shift(), h);
  else if (i + 1n < width) h = node(h, siblings.shift());
  i /= 2n;
  width = (width + 1n) / 2n;
}
console.log(JSON.stringify({
  encoding: encoding === bundle.encoding.toLowerCase(),
  leaf: leaf === bundle.leaf.toLowerCase(),
  root: "0x" + h.toString("hex") === bundle.batch.root.toLowerCase(),
  ts: String(r.ts),
}));
