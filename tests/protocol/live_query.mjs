// A TanStack DB live query (where, orderBy, limit) over an Electric collection in syncMode 'on-demand' or
// 'progressive', as an app would write one. Reports the query's rows after every change, the size of the
// underlying collection (how many rows were loaded), and every shape request the collection made.
// Usage: node live_query.mjs '<json options>'; options: url, table?, secret?, token?, syncMode, where
// {column, op: 'gt' | 'eq', value}, orderBy {column, direction}, limit. Runs until stdin closes.
import { createCollection, createLiveQueryCollection, eq, gt } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'
import { createInterface } from 'node:readline'

const options = JSON.parse(process.argv[2])
const requests = []
function emit(event) {
  process.stdout.write(JSON.stringify(event, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n')
}

const fetchClient = async (input, init) => {
  const response = await fetch(input, init)
  const url = new URL(String(input))
  requests.push({
    method: init?.method ?? 'GET',
    status: response.status,
    subset: [...url.searchParams.keys()].some((k) => k.startsWith('subset__')) || init?.method === 'POST',
    log: url.searchParams.get('log'),
    offset: url.searchParams.get('offset'),
  })
  return response
}

const params = {}
if (options.table) params.table = options.table
if (options.secret) params.secret = options.secret
const base = createCollection(
  electricCollectionOptions({
    id: `live-${Date.now()}`,
    syncMode: options.syncMode,
    shapeOptions: {
      url: options.url,
      params,
      headers: options.token ? { Authorization: `Bearer ${options.token}` } : undefined,
      fetchClient,
      subsetMethod: options.subsetMethod,
    },
    getKey: (row) => row.id,
  }),
)

const ops = { gt, eq }
const query = createLiveQueryCollection({
  startSync: true,
  query: (q) =>
    q
      .from({ item: base })
      .where(({ item }) => ops[options.where.op](item[options.where.column], options.where.value))
      .orderBy(({ item }) => item[options.orderBy.column], options.orderBy.direction)
      .limit(options.limit),
})

function report(reason) {
  emit({
    event: 'rows',
    reason,
    rows: [...query.values()].map((row) => ({ ...row })),
    loaded: base.size,
    requests: requests.splice(0),
  })
}

await query.preload()
report('ready')
query.subscribeChanges(() => report('change'))

const input = createInterface({ input: process.stdin })
input.on('line', (line) => {
  if (line.trim() === 'exit') process.exit(0)
  if (line.trim() === 'report') report('asked')
})
input.on('close', () => process.exit(0))
