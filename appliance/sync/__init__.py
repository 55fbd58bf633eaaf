"""Embedded sync engine speaking the Electric HTTP Shape API v1: offsets, shape logs, shape registry."""
