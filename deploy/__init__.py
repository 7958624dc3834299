"""Deployment on Flower's SuperLink and SuperNodes: certificates, keys and a local cluster."""
