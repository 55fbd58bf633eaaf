"""The tenant's agent workers: woken by the gateway when an entry mentions an agent, they read the thread from
its durable stream, run the agent's handler and append its reply straight to the stream, exactly once.

Entry points: `create_app(tenant)` (app.py, the HTTP face), `Worker` (worker.py, the core without HTTP),
`agents_service(tenant)` (service.py, what the deploy supervises), handlers (handlers/), each agent's own state
(store.py). The contract with the gateway is appliance/gateway/ACTIVATION.md; operators and handler authors read
README.md here.
"""
