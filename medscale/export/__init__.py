"""`medscale export JOB --merge | --adapter-only`: a serving folder proven (parity check) to answer as base + adapter
does; see `merge`."""
