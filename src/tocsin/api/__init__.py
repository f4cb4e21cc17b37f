"""The HTTP API: JSON under /api/v1 for people and workflows, and the service endpoints."""
