"""Assignments of leased work to nodes: what the control plane wants a node's agent to
run, and the protocol by which the agent claims, runs and reports it (see services)."""
