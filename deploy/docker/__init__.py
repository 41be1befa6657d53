"""The image's helpers (copied into it by the Dockerfile)."""
