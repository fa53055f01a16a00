"""The generation engine: one generate(requests, settings) API over in-process and endpoint backends."""
