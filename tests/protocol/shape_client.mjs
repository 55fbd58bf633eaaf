// Drives the official @electric-sql/client ShapeStream against a server and reports, as one JSON line per
// event on stdout, every batch it sees (after each up-to-date), the rows it holds, and every HTTP status.
// Usage: node shape_client.mjs '<json options>'; it runs until stdin closes (or "exit" is written to it).
// Every change message is also reported as it arrives ({"event": "change"}), so a test can count them.
// With {"shape": true} a Shape (the client's materialised view) wraps the stream: its rows are reported on
// every change ({"event": "shape-rows"}, keyed by each row's id column), and {"shapeRequest": {...}} asks it
// for a subset, which the Shape itself asks for again after a must-refetch.
import { Shape, ShapeStream, isChangeMessage, isControlMessage } from '@electric-sql/client'
import { createInterface } from 'node:readline'

const options = JSON.parse(process.argv[2])
const responses = []
const rows = new Map()
let batch = []

function emit(event) {
  process.stdout.write(JSON.stringify(event, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n')
}

const fetchClient = async (input, init) => {
  const response = await fetch(input, init)
  const url = new URL(String(input))
  // Body sizes of JSON answers, when asked (not for SSE, whose body never ends).
  const bytes = options.measureBytes && url.searchParams.get('live_sse') !== 'true'
    ? (await response.clone().arrayBuffer()).byteLength : undefined
  responses.push({
    bytes,
    status: response.status,
    offset: url.searchParams.get('offset'),
    live: url.searchParams.get('live'),
    sse: url.searchParams.get('live_sse'),
    handle: url.searchParams.get('handle'),
    subsetWhere: url.searchParams.get('subset__where'),
    responseOffset: response.headers.get('electric-offset'),
  })
  return response
}

const params = { table: options.table, secret: options.secret }
for (const key of ['where', 'columns', 'replica']) if (options[key] !== undefined) params[key] = options[key]
if (options.params !== undefined) params.params = options.params

const stream = new ShapeStream({
  url: options.url,
  params,
  offset: options.offset,
  handle: options.handle,
  liveSse: options.liveSse ?? false,
  log: options.log,
  subsetMethod: options.subsetMethod,
  fetchClient,
  backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 1.5 },
  onError: (error) => {
    emit({ event: 'error', message: String(error && error.message ? error.message : error), status: error.status,
           json: error.json })
    return {}
  },
})

stream.subscribe(
  (messages) => {
    for (const message of messages) {
      if (isChangeMessage(message)) {
        batch.push({ key: message.key, value: message.value, old_value: message.old_value, headers: message.headers })
        if (options.reportChanges) emit({ event: 'change', key: message.key, value: message.value, headers: message.headers })
        const op = message.headers.operation
        if (op === 'insert') rows.set(message.key, message.value)
        else if (op === 'update') rows.set(message.key, { ...(rows.get(message.key) ?? {}), ...message.value })
        else if (op === 'delete') rows.delete(message.key)
      } else if (isControlMessage(message)) {
        batch.push({ headers: message.headers })
        if (message.headers.control === 'must-refetch') rows.clear()
        if (message.headers.control === 'up-to-date') {
          emit({
            event: 'up-to-date',
            messages: batch,
            rows: Object.fromEntries([...rows.entries()].sort()),
            offset: stream.lastOffset,
            handle: stream.shapeHandle,
            responses: responses.splice(0),
          })
          batch = []
        }
      }
    }
  },
  (error) => emit({ event: 'error', message: String(error && error.message ? error.message : error) }),
)

const shape = options.shape ? new Shape(stream) : undefined
shape?.subscribe(({ rows: current }) => {
  emit({ event: 'shape-rows', rows: Object.fromEntries(current.map((row) => [String(row.id), row]).sort()) })
})

// Subset snapshots, asked for on stdin as one JSON line: {"request": {...}} (ShapeStream.requestSnapshot: the
// rows join the stream) or {"fetch": {...}} (fetchSnapshot: returned, not joined). Parameter values written
// "bigint:<digits>" are passed as BigInts, as an app holding int8 values parsed by the client would.
function subsetOptions(raw) {
  const opts = { ...raw }
  if (raw.params) {
    opts.params = Object.fromEntries(Object.entries(raw.params).map(([k, v]) =>
      [k, typeof v === 'string' && v.startsWith('bigint:') ? BigInt(v.slice(7)) : v]))
  }
  return opts
}

async function snapshotCommand(command) {
  try {
    if (command.shapeRequest) {
      await shape.requestSnapshot(subsetOptions(command.shapeRequest))
      emit({ event: 'shape-snapshot', rows: Object.fromEntries(shape.currentRows.map((row) => [String(row.id), row])) })
    } else if (command.request) {
      const { metadata, data } = await stream.requestSnapshot(subsetOptions(command.request))
      emit({ event: 'snapshot', metadata, keys: data.map((m) => m.key),
             rows: Object.fromEntries([...rows.entries()].sort()), offset: stream.lastOffset })
    } else if (command.fetch) {
      const { metadata, data } = await stream.fetchSnapshot(subsetOptions(command.fetch))
      emit({ event: 'fetched', metadata, data: data.map((m) => ({ key: m.key, value: m.value, headers: m.headers })) })
    }
  } catch (error) {
    emit({ event: 'snapshot-error', message: String(error && error.message ? error.message : error),
           status: error.status, json: error.json })
  }
}

const input = createInterface({ input: process.stdin })
input.on('line', (line) => {
  if (line.trim() === 'exit') process.exit(0)
  if (line.trim() === 'responses') emit({ event: 'responses', responses: responses.splice(0) })
  if (line.trim().startsWith('{')) snapshotCommand(JSON.parse(line))
})
input.on('close', () => process.exit(0))
