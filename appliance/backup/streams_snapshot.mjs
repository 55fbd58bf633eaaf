// A consistent snapshot of a Durable Streams data dir's metadata, taken while the server runs.
//
//   node streams_snapshot.mjs --install <streams install dir> --data <data dir> --out <copy of metadata.lmdb>
//
// The server keeps stream metadata (offsets, producers, directory names) in LMDB and the bytes in append-only
// segment files. LMDB's own hot copy (mdb_env_copy, via lmdb-js `backup`) is a consistent read snapshot; the
// server updates an offset in LMDB only after the appended bytes are fsynced, so every offset in the copy
// names bytes that are complete on disk. The caller copies each segment file up to that offset.
// Prints the metadata of every stream in the copy as JSON on stdout. Run as the tenant's OS user.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { install: { type: "string" }, data: { type: "string" }, out: { type: "string" } },
});
if (!values.install || !values.data || !values.out) {
  console.error("usage: streams_snapshot.mjs --install DIR --data DIR --out FILE");
  process.exit(2);
}
// lmdb is resolved from the streams server's own install so that the copy is made by the same library version
// that wrote the file.
const require = createRequire(join(values.install, "package.json"));
const { open } = require("lmdb");

// The same options the server opens its store with (file-store.ts): values are msgpack records with shared
// structures kept under this key, so reading them needs the same settings.
const options = { compression: true, noMemInit: true, cache: false, sharedStructuresKey: Symbol.for("structures") };
const source = join(values.data, "metadata.lmdb");
if (!existsSync(source)) {
  process.stdout.write("[]\n");
  process.exit(0);
}
const live = open({ path: source, ...options });
await live.backup(values.out, false);
await live.close();

const copy = open({ path: values.out, ...options });
const streams = [];
for (const { key, value } of copy.getRange({ start: "stream:", end: "stream:\xFF" })) {
  if (typeof key !== "string") continue;
  streams.push({
    path: value.path,
    directoryName: value.directoryName,
    contentType: value.contentType ?? null,
    currentOffset: value.currentOffset,
    forkOffset: value.forkOffset ?? null,
    closed: Boolean(value.closed),
    softDeleted: Boolean(value.softDeleted),
  });
}
await copy.close();
process.stdout.write(JSON.stringify(streams) + "\n");
