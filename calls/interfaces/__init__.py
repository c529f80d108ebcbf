"""Thin interfaces over ``calls.services``: the carrier webhook view and its ASGI gate, JSON-RPC,
the agent tool, health probes and the small pages. Each parses and checks its input, calls one
service function and renders the answer; none changes a call itself."""
