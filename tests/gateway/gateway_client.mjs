// The official Electric client (and the TanStack DB Electric collection) pointed at the tenant gateway with a
// bearer token, the way a browser uses it: no table, where, columns or secret - the gateway decides those.
// Reports one JSON line per event on stdout. Usage: node gateway_client.mjs '<json options>'
//   options: {mode: "shape"|"txid", url, token, protocolDir, liveSse?, timeout?}
// The npm packages are the ones installed for the sync protocol tests (tests/protocol/node_modules).
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

const options = JSON.parse(process.argv[2])
const require = createRequire(join(options.protocolDir, 'package.json'))
const { ShapeStream, isChangeMessage, isControlMessage } = require('@electric-sql/client')

function emit(event) {
  process.stdout.write(JSON.stringify(event, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n')
}

const headers = { Authorization: `Bearer ${options.token}` }
const statuses = []
const fetchClient = async (input, init) => {
  const response = await fetch(input, init)
  statuses.push(response.status)
  return response
}

if (options.mode === 'txid') {
  const { createCollection } = require('@tanstack/db')
  const { electricCollectionOptions } = require('@tanstack/electric-db-collection')
  const collection = createCollection(
    electricCollectionOptions({
      id: `gateway-${Date.now()}`,
      shapeOptions: { url: options.url, headers, fetchClient },
      getKey: (row) => row.id,
    }),
  )
  await collection.preload()
  emit({ event: 'ready', ids: [...collection.values()].map((row) => row.id).sort() })
  const input = createInterface({ input: process.stdin })
  input.on('line', async (line) => {
    const text = line.trim()
    if (text === 'exit') process.exit(0)
    if (!text) return
    const txid = Number(text)
    const started = Date.now()
    try {
      const resolved = await collection.utils.awaitTxId(txid, options.timeout ?? 10000)
      emit({ event: 'txid', txid, resolved: resolved === true, ms: Date.now() - started,
             ids: [...collection.values()].map((row) => row.id).sort() })
    } catch (error) {
      emit({ event: 'txid', txid, resolved: false, error: String(error && error.message), ms: Date.now() - started })
    }
  })
  input.on('close', () => process.exit(0))
} else {
  const rows = new Map()
  let batch = []
  const stream = new ShapeStream({
    url: options.url,
    headers,
    liveSse: options.liveSse ?? false,
    fetchClient,
    backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 1.5 },
    onError: (error) => {
      emit({ event: 'error', message: String(error && error.message ? error.message : error), status: error.status })
      return {}
    },
  })
  stream.subscribe((messages) => {
    for (const message of messages) {
      if (isChangeMessage(message)) {
        batch.push({ key: message.key, operation: message.headers.operation })
        const op = message.headers.operation
        if (op === 'insert') rows.set(message.key, message.value)
        else if (op === 'update') rows.set(message.key, { ...(rows.get(message.key) ?? {}), ...message.value })
        else if (op === 'delete') rows.delete(message.key)
      } else if (isControlMessage(message)) {
        if (message.headers.control === 'must-refetch') rows.clear()
        if (message.headers.control === 'up-to-date') {
          emit({ event: 'up-to-date', messages: batch, rows: [...rows.values()], statuses: statuses.splice(0) })
          batch = []
        }
      }
    }
  }, (error) => emit({ event: 'error', message: String(error && error.message ? error.message : error) }))
  const input = createInterface({ input: process.stdin })
  input.on('line', (line) => { if (line.trim() === 'exit') process.exit(0) })
  input.on('close', () => process.exit(0))
}
