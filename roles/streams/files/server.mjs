// The tenant's Durable Streams server: the upstream Node server, file-backed, on loopback.
// Run by the tenant's service manager as the tenant's OS user:
//   node server.mjs --host 127.0.0.1 --port N --data-dir DIR --long-poll-timeout MS
// The long-poll timeout has no default here: its one default is the streams role's setting
// (streams_long_poll_timeout_ms), which the service's command line always passes.
import { DurableStreamTestServer } from "@durable-streams/server";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    "data-dir": { type: "string" },
    "long-poll-timeout": { type: "string" },
  },
});
if (!values.port || !values["data-dir"] || !values["long-poll-timeout"]) {
  console.error("usage: server.mjs --port N --data-dir DIR --long-poll-timeout MS [--host H]");
  process.exit(2);
}

const server = new DurableStreamTestServer({
  host: values.host,
  port: Number(values.port),
  dataDir: values["data-dir"],
  longPollTimeout: Number(values["long-poll-timeout"]),
});
await server.start();

// The upstream server always serves an unauthenticated fault-injection route (/_test/inject-error); a tenant's
// data plane must not, so requests under /_test/ are answered 404 before the upstream handler sees them.
const [upstream] = server.server.listeners("request");
server.server.removeAllListeners("request");
server.server.on("request", (req, res) => {
  if (req.url.startsWith("/_test/")) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return;
  }
  upstream(req, res);
});
console.log(`durable streams listening on ${server.url} data=${values["data-dir"]}`);

let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    if (stopping) return;
    stopping = true;
    await server.stop();
    process.exit(0);
  });
}
