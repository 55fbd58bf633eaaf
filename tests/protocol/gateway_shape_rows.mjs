// The official @electric-sql/client syncing one shape through a tenant's gateway (or its front door): the
// gateway decides table, columns and WHERE, so the client gives only the URL and the member's token.
// Usage: SHAPE_URL=https://acme.appliance.internal/api/shapes/houses TOKEN=... node gateway_shape_rows.mjs
// Prints the shape's rows as one JSON array once the client is up to date, then exits.
import { Shape, ShapeStream } from '@electric-sql/client'

const stream = new ShapeStream({
  url: process.env.SHAPE_URL,
  headers: { Authorization: `Bearer ${process.env.TOKEN}` },
})
const rows = await new Shape(stream).rows
process.stdout.write(JSON.stringify(rows) + '\n')
stream.unsubscribeAll()
process.exit(0)
