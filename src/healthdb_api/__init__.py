"""The reference FastAPI service built on healthdb's public API."""
