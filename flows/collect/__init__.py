"""The Segment-compatible HTTP collector (``tetik collect``): the mapping and the ASGI app."""
