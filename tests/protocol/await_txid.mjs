// A TanStack DB collection on the official Electric collection options. Reports when it is ready, then for
// every txid written to stdin reports whether awaitTxId resolved (and how long it took).
// Usage: node await_txid.mjs '<json options>'
import { createCollection } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'
import { createInterface } from 'node:readline'

const options = JSON.parse(process.argv[2])
function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

const collection = createCollection(
  electricCollectionOptions({
    id: `items-${Date.now()}`,
    shapeOptions: { url: options.url, params: { table: options.table, secret: options.secret } },
    getKey: (row) => row.id,
  }),
)

await collection.preload()
emit({ event: 'ready', size: collection.size, rows: [...collection.values()] })

const input = createInterface({ input: process.stdin })
input.on('line', async (line) => {
  const text = line.trim()
  if (text === 'exit') process.exit(0)
  if (!text) return
  const txid = Number(text)
  const started = Date.now()
  try {
    const result = await collection.utils.awaitTxId(txid, options.timeout ?? 5000)
    emit({ event: 'txid', txid, resolved: result === true, ms: Date.now() - started, size: collection.size })
  } catch (error) {
    emit({ event: 'txid', txid, resolved: false, error: String(error && error.message), ms: Date.now() - started })
  }
})
input.on('close', () => process.exit(0))
