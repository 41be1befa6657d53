"""Deployment: the image's healthcheck, the Grafana dashboard generator."""
