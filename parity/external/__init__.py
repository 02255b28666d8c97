"""Renders from the user's own inference stack (docs/your-own-stack.md).

export.py   the plan as render requests (one JSON per item + request files in the reference server's format)
sources.py  render sources the runner takes: parity's engine, a folder of images, a running inference server
endpoint.py the reference inference server's HTTP client (urllib only)
"""
